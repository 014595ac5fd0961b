"""ONNX export: a dynamic-batch model.onnx that onnxruntime runs like PyTorch, and that is refused once stale."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import synthetic_lesion

from skinlesion.cli.main import main
from skinlesion.data.transforms import Preprocessing
from skinlesion.inference import onnx_export as export
from skinlesion.inference.predictor import Predictor
from skinlesion.models import create_model
from skinlesion.models.folder import ModelFolderError, save_model_folder

LABELS = ["bkl", "mel", "nv"]


def save_tiny(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("lesion_cnn", len(LABELS), widths=(8, 16, 16, 32), hidden=16).eval()
    return save_model_folder(folder, model, architecture="lesion_cnn", label_names=LABELS,
                             preprocessing=Preprocessing(input_size=64),
                             model_args={"widths": [8, 16, 16, 32], "hidden": 16},
                             extras={"temperature": 1.5, "tta": "flips"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    """One export through the CLI for the whole module (the exporter takes seconds)."""
    folder = save_tiny(tmp_path_factory.mktemp("onnx") / "tiny", seed=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", "onnx", "--model", str(folder)]) == 0
    return folder, json.loads(out.getvalue())


def test_export_writes_a_dynamic_batch_graph(exported):
    folder, report = exported
    assert report["path"] == str(folder / "model.onnx") and report["same_top1"] is True
    model = onnx.load(str(folder / "model.onnx"))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert not list(folder.glob(".model.*"))  # no temporary file left behind


def test_onnxruntime_matches_pytorch(exported):
    folder, _ = exported
    fast = Predictor.from_pretrained(folder)                  # picks up model.onnx automatically
    eager = Predictor.from_pretrained(folder, use_onnx=False)
    assert fast.backend == "onnxruntime" and eager.backend == "torch"
    images = [synthetic_lesion(s, label=s) for s in range(3)]
    x = torch.stack([eager.preprocess(i)[0] for i in images])
    torch.testing.assert_close(fast.forward_views(x, "full"), eager.forward_views(x, "full"), atol=1e-4, rtol=1e-4)
    for a, b in zip(fast.predict(images, tta="full"), eager.predict(images, tta="full"), strict=True):
        assert a.label == b.label
        assert np.allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-4)


def test_cam_stays_in_pytorch_with_onnx(exported):
    folder, _ = exported
    fast = Predictor.from_pretrained(folder)
    eager = Predictor.from_pretrained(folder, use_onnx=False)
    img = synthetic_lesion(4)
    a, b = fast.explain(img), eager.explain(img)
    assert a.target_label == b.target_label
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)


def test_stale_onnx_is_refused(exported, tmp_path, caplog):
    folder, _ = exported
    copy = tmp_path / "retrained"
    shutil.copytree(folder, copy)
    save_tiny(copy, seed=1)  # new weights, old model.onnx
    with pytest.raises(ModelFolderError, match="re-export"):
        Predictor.from_pretrained(copy, variant="onnxruntime")
    # Chosen automatically, a stale file is passed over for PyTorch, saying why (never used silently).
    with caplog.at_level("WARNING"):
        fallback = Predictor.from_pretrained(copy)
    assert fallback.backend == "torch" and fallback.variant == "channels_last"
    assert "not exported from the current weights" in fallback.variant_note
    assert "re-export" in caplog.text
    assert Predictor.from_pretrained(copy, use_onnx=False).backend == "torch"


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ModelFolderError, match="not a local model folder"):
        export.export_onnx("someone/some-model")
    with pytest.raises(ValueError, match="opset 13"):
        export.export_onnx(save_tiny(tmp_path / "m", seed=0), opset=13)
