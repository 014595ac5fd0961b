"""scripts/compare_ensembles.py: each subset's validation score is the score of the folder `skinlesion ensemble`
would build from it (before the ensemble's own temperature), on tiny folders and synthetic data made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_factory import ISIC2017_HEADER, write_csv, write_image
from fitted_folder import LABELS, write_synthetic_ham, write_tiny_model
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.data.sources import load_sources
from skinlesion.evaluation.view_logits import collect_view_logits
from skinlesion.inference.predictor import Predictor
from skinlesion.models.ensemble import write_ensemble

ROOT = Path(__file__).resolve().parents[1]


def tiny_folders(tmp_path: Path, split_of: dict[str, str]) -> list[Path]:
    """Two untrained tiny model folders sharing the split manifest `split_of` (image id -> split)."""
    manifest = "image_id,split\n" + "\n".join(f"{i},{s}" for i, s in split_of.items()) + "\n"
    folders = []
    for seed in (0, 1):
        folder = write_tiny_model(tmp_path / f"m{seed}", seed=seed)
        (folder / "split_manifest.csv").write_text(manifest)
        folders.append(folder)
    return folders


def run_compare(data: list[Path], folders: list[Path], out: Path, *extra: str) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_ensembles.py"), "--data",
                             *map(str, data), "--out", str(out), "--workers", "0", *map(str, folders), *extra],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "compare_ensembles.json").read_text())


def test_a_pairs_row_is_the_built_ensembles_validation_score(tmp_path):
    data = tmp_path / "ham"
    folders = tiny_folders(tmp_path, write_synthetic_ham(data))
    rows = run_compare([data], folders, tmp_path / "cmp", "--weights", "3", "1")["rows"]
    assert [r["members"] for r in rows] == [["m0"], ["m1"], ["m0", "m1"], ["m0", "m1"]]
    assert rows[3]["weights"] == [0.75, 0.25]

    ensemble = write_ensemble(folders, tmp_path / "ens")["out"]
    predictor = Predictor.from_pretrained(ensemble, use_onnx=False)
    val = select_split(load_table(data), read_manifest(folders[0] / "split_manifest.csv"), "val")
    views = collect_view_logits(predictor, val, "flips", batch_size=8, workers=0, progress=False)
    probs = torch.softmax(views.logits, dim=-1).mean(dim=0).numpy()
    y = views.targets.numpy()
    assert rows[2]["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    # The AUC is continuous in the probabilities, so it would catch a wrong weighting or temperature that leaves
    # the argmax (and balanced accuracy) of these tiny untrained models unchanged.
    mel = LABELS.index("mel")
    assert rows[2]["val_melanoma_auc"] == pytest.approx(roc_auc_score(y == mel, probs[:, mel]), abs=1e-6)
    assert rows[2]["val_melanoma_auc"] != pytest.approx(rows[0]["val_melanoma_auc"], abs=1e-6)
    # --weights 3 1 scores the folder `skinlesion ensemble --weight 3 1` builds.
    weighted = Predictor.from_pretrained(write_ensemble(folders, tmp_path / "ens31", [3.0, 1.0])["out"], use_onnx=False)
    views = collect_view_logits(weighted, val, "flips", batch_size=8, workers=0, progress=False)
    probs = torch.softmax(views.logits, dim=-1).mean(dim=0).numpy()
    assert rows[3]["val_melanoma_auc"] == pytest.approx(roc_auc_score(y == mel, probs[:, mel]), abs=1e-6)
    assert rows[3]["val_melanoma_auc"] != pytest.approx(rows[2]["val_melanoma_auc"], abs=1e-6)


def test_with_several_sources_each_source_and_the_worst_one_are_scored(tmp_path):
    """HAM10000 + an ISIC 2017 validation folder: per-source scores are those of each source's own images, and the
    worst source's balanced accuracy (the rule that chooses) is the smaller of the two."""
    data = tmp_path / "ham"
    split_of = write_synthetic_ham(data)
    isic = tmp_path / "isic_val"
    rows = []
    for i, label in enumerate(["mel", "mel", "bkl", "nv", "nv", "nv", "mel", "nv"]):
        image_id = f"ISIC_9{i:06d}"
        write_image(isic / "images" / f"{image_id}.jpg", seed=100 + i, label=i)
        rows.append(f"{image_id},{1.0 if label == 'mel' else 0.0},{1.0 if label == 'bkl' else 0.0}")
        split_of[image_id] = "val"
    write_csv(isic / "ISIC-2017_Validation_Part3_GroundTruth.csv", ISIC2017_HEADER, rows)
    folders = tiny_folders(tmp_path, split_of)
    report = run_compare([data, isic], folders, tmp_path / "cmp")
    assert report["n_val_per_source"]["isic2017"] == 8
    pair = report["rows"][2]
    assert set(pair["per_source"]) == {"ham10000", "isic2017"}
    assert pair["worst_source_balanced_accuracy"] == min(v["balanced_accuracy"] for v in pair["per_source"].values())

    predictor = Predictor.from_pretrained(write_ensemble(folders, tmp_path / "ens")["out"], use_onnx=False)
    val = select_split(load_sources([str(data), str(isic)]), read_manifest(folders[0] / "split_manifest.csv"), "val")
    views = collect_view_logits(predictor, val, "flips", batch_size=8, workers=0, progress=False)
    probs = torch.softmax(views.logits, dim=-1).mean(dim=0).numpy()
    y, is_isic = views.targets.numpy(), (val.frame["source"] == "isic2017").to_numpy()
    assert pair["per_source"]["isic2017"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y[is_isic], probs[is_isic].argmax(1)))
    mel = LABELS.index("mel")
    assert pair["per_source"]["ham10000"]["melanoma_auc"] == pytest.approx(
        roc_auc_score(y[~is_isic] == mel, probs[~is_isic, mel]), abs=1e-6)
