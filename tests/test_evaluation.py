"""Evaluation: label checks, split choice, temperature fitting, and evaluate.py end to end on tiny data."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lesion_mask, synthetic_lesion
from PIL import Image

from skinlesion.data import DataError, load_table
from skinlesion.evaluation import evaluate as evaluation
from skinlesion.evaluation import view_logits
from skinlesion.inference import calibration

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {
    "n_images", "classes", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc_ovr_macro",
    "per_class", "ece", "confusion_matrix", "malignant_auc", "macro_precision", "macro_recall",
    "weighted_precision", "weighted_recall", "melanoma", "balanced_accuracy_ci95", "auc_ovr_macro_ci95",
    "ece_before", "ece_after", "temperature", "timing", "elapsed_seconds", "label_mapping", "classes_present",
    "model_classes", "restricted_to_present", "prediction_rule", "comparison", "models", "plots", "data", "model",
}


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _imagefolder(root: Path, labels: tuple[str, ...], n: int = 3, masks: Path | None = None) -> Path:
    for c, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for i in range(n):
            img = synthetic_lesion(100 * c + i, size=(96, 72), label=c)
            img.save(root / label / f"{label}_{i}.png")
            if masks is not None:
                Image.fromarray(lesion_mask(img).astype(np.uint8) * 255).save(masks / f"{label}_{i}_segmentation.png")
    return root


def _ham_like(root: Path, folder: Path) -> Path:
    """A HAM10000-layout set (metadata CSV + images) and a split manifest inside the model folder."""
    (root / "images").mkdir(parents=True)
    rows, splits = [], []
    for c, dx in enumerate(("bkl", "mel", "nv")):
        for i in range(6):
            image_id = f"ISIC_{c}{i:06d}"
            synthetic_lesion(10 * c + i, size=(80, 60), label=c).save(root / "images" / f"{image_id}.png")
            rows.append({"lesion_id": f"HAM_{c}{i}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                         "age": "50", "sex": "male", "localization": "back"})
            splits.append({"image_id": image_id, "split": ("train", "train", "val", "val", "test", "test")[i]})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    pd.DataFrame(splits).to_csv(folder / "split_manifest.csv", index=False)
    return root


# ---------------------------------------------------------------------------------------------

def test_unknown_data_label_names_it_and_suggests_label_map():
    with pytest.raises(view_logits.LabelMappingError) as err:
        view_logits.check_labels(["melanoma", "nv", "weird"], ["bkl", "mel", "nv"], {})
    message = str(err.value)
    assert "melanoma" in message and "weird" in message and "--label-map" in message
    assert "melanoma=mel" in message  # a taxonomy alias becomes a concrete suggestion
    assert isinstance(err.value, DataError)
    view_logits.check_labels(["mel", "nv"], ["bkl", "mel", "nv"], {})  # a subset is fine


def test_split_choice_external_whole_ham_needs_manifest(tmp_path):
    table = load_table(_imagefolder(tmp_path / "d", ("bkl", "nv"), n=1))
    chosen, split = view_logits.resolve_split(table, None, None)
    assert split == "all" and len(chosen.frame) == 2
    with pytest.raises(DataError, match="--split all"):
        view_logits.resolve_split(table, "test", None)
    folder = tmp_path / "m"
    folder.mkdir()
    ham = load_table(_ham_like(tmp_path / "ham", folder))
    with pytest.raises(DataError, match="no split manifest"):
        view_logits.resolve_split(ham, None, None)
    test_rows, split = view_logits.resolve_split(ham, None, folder / "split_manifest.csv")
    assert split == "test" and len(test_rows.frame) == 6


def test_temperature_fit_repairs_an_overconfident_toy_model():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(400, 3, generator=gen) * 1.5
    targets = torch.multinomial(torch.softmax(true_logits, dim=-1), 1, generator=gen)[:, 0]  # calibrated by construction
    views = torch.stack([5 * (true_logits + 0.05 * torch.randn(400, 3, generator=gen)) for _ in range(2)])  # (V, B, K)
    fit = evaluation.fit_calibration(views, targets, fitted_on="val")
    assert 3.0 < fit["temperature"] < 8.0
    assert fit["ece_after"] < fit["ece_before"] / 2
    assert fit["ood"]["score"] == "energy" and fit["ood"]["quantile"] == 0.01
    energies = calibration.energy_score(views, fit["temperature"]).numpy()
    assert (energies < fit["ood"]["threshold"]).mean() == pytest.approx(0.01, abs=0.006)
    with pytest.raises(evaluation.CalibrationSplitError, match="refusing"):
        evaluation.fit_calibration(views, targets, fitted_on="test")


def test_score_keys_and_intervals_from_view_logits():
    gen = torch.Generator().manual_seed(1)
    targets = torch.tensor([0, 0, 2, 2, 2, 0] * 5)
    logits = torch.nn.functional.one_hot(targets, 3).float()[None] * 2 + torch.randn(2, 30, 3, generator=gen)
    report = evaluation.score(logits, targets, ["bkl", "mel", "nv"], temperature=2.0, bootstrap=40, seed=0)
    assert report["classes_present"] == ["bkl", "nv"] and report["restricted_to_present"]
    assert "renormalised" in report["prediction_rule"]
    low, high = report["balanced_accuracy_ci95"]
    assert low <= report["balanced_accuracy"] <= high
    assert report["ece_after"] == report["ece"] != report["ece_before"]
    assert sum(report["reliability"]["after"]["count"]) == 30


def test_evaluation_path_gives_the_predictor_probabilities(tmp_path, tiny_model_folder):
    """Dataset + forward_views in evaluation == Predictor.predict on the same file (no second preprocessing)."""
    from skinlesion.inference.predictor import Predictor

    root = tmp_path / "d"
    (root / "mel").mkdir(parents=True)
    for i in range(2):  # larger than the training cache's 256 px short side
        synthetic_lesion(i, size=(400, 300), label=1).save(root / "mel" / f"m{i}.png")
    table = load_table(root)
    predictor = Predictor.from_pretrained(tiny_model_folder, device="cpu", use_onnx=False)
    got = view_logits.collect_view_logits(predictor, table, "flips", batch_size=2, workers=0, progress=False)
    assert got.logits.shape == (4, 2, 3)
    probs = calibration.calibrated_probs(got.logits, predictor.loaded.temperature)
    expected = [predictor.predict(p, tta="flips").probs for p in table.frame["path"]]
    np.testing.assert_allclose(probs.numpy(), [[e[c] for c in predictor.label_names] for e in expected], rtol=0, atol=2e-7)


def test_evaluate_cli_writes_every_file_and_key(tmp_path, tiny_model_folder, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    data = _imagefolder(tmp_path / "data", ("bkl", "mel", "nv"), n=3, masks=masks)
    second = tmp_path / "second_model"
    shutil.copytree(tiny_model_folder, second)
    out = tmp_path / "out"
    rc = _evaluate_main()([
        "--model", str(tiny_model_folder), "--model", str(second), "--data", str(data), "--out", str(out),
        "--tta", "flips", "--compare-tta", "--bootstrap", "50", "--workers", "0", "--batch-size", "4",
        "--cam-methods", "gradcam,eigencam", "--cam-images", "2", "--masks", str(masks), "--sheet-images", "2",
        "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert REQUIRED_KEYS <= set(report)
    assert report["n_images"] == 9 and report["classes"] == ["bkl", "mel", "nv"]
    assert set(report["per_class"]["mel"]) == {"precision", "recall", "f1", "support", "auc"}
    assert np.array(report["confusion_matrix"]).sum() == 9
    assert [(r["model"], r["tta"]) for r in report["comparison"]] == [
        ("tiny_model", "none"), ("tiny_model", "flips"), ("second_model", "none"), ("second_model", "flips")]
    assert report["timing"]["n_views"] == 4 and report["timing"]["inference_seconds"] > 0
    quality = report["explanation_quality"]
    assert {r["method"] for r in quality["methods"]} == {"gradcam", "eigencam"}
    assert all("energy_inside_mask" in r and "pointing_accuracy" in r for r in quality["methods"])
    for name in ("report.md", "confusion_matrix.png", "confusion_matrix_normalized.png", "roc_curves.png",
                 "reliability.png", "cam_methods.png", "cam_comparison.png", "second_model/reliability.png"):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    assert "## Comparison" in markdown and "| rank | method |" in markdown
    assert set(report["melanoma"]["auc_against"]) == {"bkl", "nv"}
    assert "melanoma AUC against each class alone | bkl " in markdown


def test_label_map_cli_scores_the_present_classes_only(tmp_path, tiny_model_folder, capsys):
    data = _imagefolder(tmp_path / "ph2", ("atypical_nevus", "common_nevus", "melanoma"), n=2)
    main = _evaluate_main()
    common = ["--model", str(tiny_model_folder), "--data", str(data), "--tta", "none", "--bootstrap", "0",
              "--workers", "0", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "atypical_nevus" in err and "--label-map" in err and "melanoma=mel" in err
    assert not (tmp_path / "bad" / "report.json").exists()

    out = tmp_path / "ok"
    rc = main([*common, "--out", str(out), "--label-map", "common_nevus=nv,atypical_nevus=nv,melanoma=mel"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["classes_present"] == ["mel", "nv"] and report["restricted_to_present"] is True
    assert report["model_classes"] == ["bkl", "mel", "nv"]
    assert report["label_mapping"]["label_map"]["melanoma"] == "mel"
    assert report["label_mapping"]["counts"] == {"mel": 2, "nv": 4}
    assert "accuracy_all_classes" in report and len(report["confusion_matrix"]) == 2


def test_fit_temperature_writes_extras_and_refuses_external_data(tmp_path, tiny_model_folder, capsys):
    data = _ham_like(tmp_path / "ham", tiny_model_folder)
    main = _evaluate_main()
    common = ["--model", str(tiny_model_folder), "--tta", "flips", "--bootstrap", "0", "--workers", "0",
              "--no-progress", "--fit-temperature"]
    rc = main([*common, "--data", str(data), "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    extras = json.loads((tiny_model_folder / "config.json").read_text())["skinlesion"]
    assert extras["calibration"]["fitted_on"] == "val" and extras["calibration"]["n"] == 6
    assert extras["ood"]["score"] == "energy" and np.isfinite(extras["ood"]["threshold"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["split"] == "test" and report["n_images"] == 6
    assert report["temperature"] == pytest.approx(extras["temperature"])
    assert report["calibration_fit"]["n"] == 6

    external = _imagefolder(tmp_path / "ext", ("mel", "nv"), n=1)
    assert main([*common, "--data", str(external), "--out", str(tmp_path / "ext_out")]) == 2
    assert "refusing to fit the temperature" in capsys.readouterr().err


@pytest.mark.realdata
def test_isic2017_external_set_with_tiny_model(shared_data, tiny_model_folder, tmp_path):
    """The 600 ISIC 2017 test images through the whole pipeline (tiny untrained model, 64 px, no TTA; ~10 s)."""
    out = tmp_path / "isic"
    rc = _evaluate_main()(["--model", str(tiny_model_folder), "--data", str(shared_data / "ISIC2017_test"),
                           "--tta", "none", "--bootstrap", "100", "--workers", "2", "--no-progress", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 600 and report["data"]["layout"] == "isic2017"
    assert report["label_mapping"]["counts"] == {"bkl": 90, "mel": 117, "nv": 393}
    assert report["malignant_auc"] is not None and 0.0 <= report["malignant_auc"] <= 1.0
