"""A model folder whose mean/std are not ImageNet's predicts identically on every path.

`tf_efficientnet_lite*` weights expect mean = std = 0.5. Whatever a folder says, the Predictor,
evaluation, the predict CLI, ONNX and the app must all read it from the folder: here one folder with
mean = std = 0.5 is run through each path and the probabilities must agree; a control folder with the
same weights but ImageNet statistics must differ (so the comparison would catch a path that ignores
the folder and uses defaults).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import pytest
import torch
from conftest import synthetic_lesion

from skinlesion.data.transforms import Preprocessing
from skinlesion.inference.predictor import Predictor
from skinlesion.models import create_model
from skinlesion.models.folder import save_model_folder, set_preprocessing

LABELS = ["bkl", "mel", "nv"]
HALF = Preprocessing(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("norm")
    torch.manual_seed(0)
    model = create_model("lesion_cnn", len(LABELS), widths=(8, 16, 16, 32), hidden=16).eval()
    half = save_model_folder(root / "half", model, architecture="lesion_cnn", label_names=LABELS, preprocessing=HALF,
                             model_args={"widths": [8, 16, 16, 32], "hidden": 16},
                             extras={"temperature": 1.0, "tta": "flips"})
    control = root / "imagenet"
    shutil.copytree(half, control)
    set_preprocessing(control, Preprocessing(input_size=64))  # same weights, ImageNet mean/std
    images = root / "images"
    for label in range(len(LABELS)):
        (images / LABELS[label]).mkdir(parents=True)
        for i in range(2):
            synthetic_lesion(10 * label + i, size=(90, 70), label=label).save(images / LABELS[label] / f"{label}_{i}.png")
    return half, control, images


def _paths(images: Path) -> list[Path]:
    return sorted(images.rglob("*.png"))


def _library(folder: Path, images: Path, **kwargs) -> torch.Tensor:
    predictor = Predictor.from_pretrained(folder, **kwargs)
    preds = predictor.predict([str(p) for p in _paths(images)])
    return torch.tensor([[p.probs[c] for c in LABELS] for p in preds])


def test_the_folder_records_non_imagenet_statistics(folders):
    half, _, _ = folders
    predictor = Predictor.from_pretrained(half, use_onnx=False)
    assert predictor.preprocessing.mean == (0.5, 0.5, 0.5) and predictor.preprocessing.std == (0.5, 0.5, 0.5)


def test_the_control_folder_differs(folders):
    half, control, images = folders
    assert not torch.allclose(_library(half, images, use_onnx=False), _library(control, images, use_onnx=False),
                              atol=1e-3)


def test_evaluation_path_matches_the_library(folders):
    from skinlesion.data import load_table
    from skinlesion.evaluation.view_logits import collect_view_logits

    half, _, images = folders
    predictor = Predictor.from_pretrained(half, use_onnx=False)
    table = load_table(str(images), layout="imagefolder")
    logits = collect_view_logits(predictor, table, "flips", batch_size=4, workers=0, progress=False)
    from skinlesion.inference.calibration import calibrated_probs

    probs = calibrated_probs(logits.logits, 1.0)
    by_path = dict(zip(table.frame["path"], probs, strict=True))
    expected = _library(half, images, use_onnx=False)
    got = torch.stack([by_path[str(p)] for p in _paths(images)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_predict_cli_matches_the_library(folders, tmp_path):
    from skinlesion.cli.main import main

    half, _, images = folders
    out = tmp_path / "preds.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["predict", "--model", str(half), "--images", str(images), "--out", str(out), "--inference", "channels_last", "--workers", "1"])
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    got = torch.tensor([[float(rows[str(p.relative_to(images))][f"prob_{c}"]) for c in LABELS] for p in _paths(images)])
    torch.testing.assert_close(got, _library(half, images, use_onnx=False), atol=1e-5, rtol=0)


def test_onnx_matches_the_library(folders, tmp_path):
    from skinlesion.cli.main import main

    half, _, images = folders
    onnx_folder = tmp_path / "half_onnx"
    shutil.copytree(half, onnx_folder)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "onnx", "--model", str(onnx_folder)]) == 0
    torch.testing.assert_close(_library(onnx_folder, images, use_onnx=True), _library(half, images, use_onnx=False),
                               atol=1e-4, rtol=0)


def test_app_matches_the_library(folders):
    from skinlesion import app as app_logic

    half, _, images = folders
    registry = app_logic.ModelRegistry([app_logic.ModelSpec(source=str(half), name="half")])
    registry.load_all(warm_cam=False)
    expected = _library(half, images, use_onnx=False)
    for row, path in enumerate(_paths(images)):
        analysis = app_logic.analyze(registry, str(path), "half")
        got = torch.tensor([analysis.details["probs"][c] for c in LABELS])
        torch.testing.assert_close(got, expected[row], atol=1e-5, rtol=0)
