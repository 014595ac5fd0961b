"""Regression check of the shipped model (weights/) on the HAM10000 test split of its own manifest.

The reference figure is the balanced accuracy in weights/eval/ham10000_test/report.json, the report
the model card is rendered from. Re-evaluating the shipped folder must not fall more than 0.01 below it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
REFERENCE = WEIGHTS / "eval" / "ham10000_test" / "report.json"


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_holds_its_model_card_balanced_accuracy(shared_data, tmp_path):
    if not (WEIGHTS / "model.safetensors").exists():
        pytest.fail("weights/ has no shipped model (model.safetensors missing)")
    from skinlesion.evaluation import EvalConfig, run

    reference = json.loads(REFERENCE.read_text())
    report = run(EvalConfig(models=(str(WEIGHTS),), data=str(shared_data / "HAM10000"), out=str(tmp_path),
                            split="test", manifest=str(WEIGHTS / "split_manifest.csv"), tta="flips",
                            bootstrap=0, workers=1, progress=False))
    assert report["n_images"] == reference["n_images"]
    assert report["balanced_accuracy"] >= reference["balanced_accuracy"] - 0.01, (
        f"balanced accuracy {report['balanced_accuracy']:.4f} is more than 0.01 below the model card's "
        f"{reference['balanced_accuracy']:.4f}"
    )


def test_shipped_model_folder_is_complete_and_loads():
    from skinlesion import Predictor

    for name in ("model.safetensors", "config.json", "README.md", "split_manifest.csv"):
        assert (WEIGHTS / name).is_file(), f"weights/{name} is missing"
    predictor = Predictor.from_pretrained(WEIGHTS)
    assert len(predictor.label_names) == 7
    assert predictor.loaded.extras["ood"]["threshold"] is not None
    assert 0.05 < predictor.loaded.temperature < 20
