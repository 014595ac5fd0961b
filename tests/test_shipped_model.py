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
    from skinlesion.evaluation.evaluate import EvalConfig, run

    reference = json.loads(REFERENCE.read_text())
    report = run(EvalConfig(models=(str(WEIGHTS),), data=str(shared_data / "HAM10000"), out=str(tmp_path),
                            split="test", manifest=str(WEIGHTS / "split_manifest.csv"), tta="flips",
                            bootstrap=0, workers=1, progress=False))
    assert report["n_images"] == reference["n_images"]
    assert report["balanced_accuracy"] >= reference["balanced_accuracy"] - 0.01, (
        f"balanced accuracy {report['balanced_accuracy']:.4f} is more than 0.01 below the model card's "
        f"{reference['balanced_accuracy']:.4f}"
    )


@pytest.mark.realdata
def test_shipped_model_crops_an_uncropped_dermatoscope_and_accepts_the_lesion(shared_data):
    """The shipped folder crops a black circular surround away (fov_crop) before classifying and checking;
    without it, its layered OOD check refused about half of such lesions (README "Not a dermoscopic image?")."""
    import numpy as np

    from skinlesion import Predictor
    from skinlesion.data import load_table, read_manifest, select_split
    from skinlesion.evaluation.shifts import aperture_shift

    predictor = Predictor.from_pretrained(WEIGHTS, tta="none")
    assert predictor.preprocessing.fov_crop is True
    val = select_split(load_table(shared_data / "HAM10000"), read_manifest(WEIGHTS / "split_manifest.csv"), "val")
    framed = [aperture_shift(path, i) for i, path in enumerate(val.frame["path"].tolist()[:40])]
    for image in framed[:5]:
        _, shown = predictor.preprocess(image)
        assert (np.asarray(shown).max(axis=2) < 16).mean() <= 0.01  # the model sees no black corners
    flagged = sum(p.out_of_distribution for p in predictor.predict(framed))
    # 2.7% expected (README, 1,006 framed validation lesions); 4 or more of 40 has probability < 3%
    assert flagged <= 3, f"{flagged} of 40 aperture-framed validation lesions refused"


def test_shipped_model_folder_is_complete_and_loads():
    from skinlesion import Predictor

    for name in ("model.safetensors", "config.json", "README.md", "split_manifest.csv"):
        assert (WEIGHTS / name).is_file(), f"weights/{name} is missing"
    predictor = Predictor.from_pretrained(WEIGHTS)
    assert len(predictor.label_names) == 7
    assert predictor.loaded.extras["ood"]["threshold"] is not None
    assert 0.05 < predictor.loaded.temperature < 20


def test_shipped_model_card_is_rendered_from_the_shipped_reports():
    """weights/README.md is exactly what the reports render to: no hand-edited (or stale) number in the card."""
    from skinlesion.models.card import render_model_card

    assert (WEIGHTS / "README.md").read_text() == render_model_card(WEIGHTS)
    reference = json.loads(REFERENCE.read_text())
    # The Hub's model-index carries the test split's balanced accuracy (4 places: a 0.0001 change shows).
    assert f"value: {round(reference['balanced_accuracy'], 4)}\n" in (WEIGHTS / "README.md").read_text()


def test_readme_results_are_rendered_from_the_shipped_reports():
    """The README's results and per-group blocks are what scripts/readme_results.py renders from weights/eval:
    after a new model ships, `python scripts/readme_results.py --write README.md` updates them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results", WEIGHTS.parent / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (WEIGHTS.parent / "README.md").read_text()
    for name, block in module.render(WEIGHTS).items():
        assert block in readme, f"README's {name} block is stale: run python scripts/readme_results.py --write README.md"
