"""scripts/compare_ensembles.py: each subset's validation score is the score of the folder `skinlesion ensemble`
would build from it (before the ensemble's own temperature), on tiny folders and synthetic data made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fitted_folder import LABELS, write_synthetic_ham, write_tiny_model
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.evaluation.view_logits import collect_view_logits
from skinlesion.inference.predictor import Predictor
from skinlesion.models.ensemble import write_ensemble

ROOT = Path(__file__).resolve().parents[1]


def test_a_pairs_row_is_the_built_ensembles_validation_score(tmp_path):
    data = tmp_path / "ham"
    split_of = write_synthetic_ham(data)
    manifest = "image_id,split\n" + "\n".join(f"{i},{s}" for i, s in split_of.items()) + "\n"
    folders = []
    for seed in (0, 1):
        folder = write_tiny_model(tmp_path / f"m{seed}", seed=seed)
        (folder / "split_manifest.csv").write_text(manifest)
        folders.append(folder)
    out = tmp_path / "cmp"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_ensembles.py"), "--data", str(data),
                             "--out", str(out), "--workers", "0", *map(str, folders)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((out / "compare_ensembles.json").read_text())["rows"]
    assert [r["members"] for r in rows] == [["m0"], ["m1"], ["m0", "m1"]]

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
