"""scripts/export_checkpoint.py: the last checkpoint's EMA weights become a complete model folder."""

from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic_training import make_imagefolder, tiny_config

from skinlesion.models.folder import load_model_folder
from skinlesion.training.checkpoint import latest_checkpoint
from skinlesion.training.loop import train

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_checkpoint.py"


def export(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_last_checkpoint_exports_as_a_model_folder_with_its_own_epoch_metrics(tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    train(tiny_config(data, run, epochs=3, ema=True, ema_decay=0.9))
    out = tmp_path / "last"
    export(monkeypatch, "--run", str(run), "--out", str(out))

    ema = load_file(str(latest_checkpoint(run / "checkpoints") / "ema.safetensors"))
    exported = load_model_folder(out)
    for name, value in exported.model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    source = load_model_folder(run)
    assert exported.preprocessing == source.preprocessing and exported.label_names == source.label_names
    extras = json.loads((out / "config.json").read_text())["skinlesion"]
    last = list(csv.DictReader((run / "history.csv").open()))[-1]
    assert extras["val_metrics"]["epoch"] == 3 == int(last["epoch"])  # the exported epoch's row, not the best one's
    assert extras["val_metrics"]["val_balanced_accuracy"] == float(last["val_balanced_accuracy"])
    assert extras["temperature"] == 1.0 and "ood" not in extras  # fitted for other weights: refit on val
    assert (out / "split_manifest.csv").read_bytes() == (run / "split_manifest.csv").read_bytes()

    export(monkeypatch, "--run", str(run), "--out", str(tmp_path / "half"), "--half")
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "half" / "model.safetensors")).values()
               if v.is_floating_point())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # loads back as float32 and predicts as the float32 export, up to fp16 rounding
        torch.testing.assert_close(load_model_folder(tmp_path / "half").model(x), exported.model(x),
                                   rtol=0.02, atol=0.02)

    with pytest.raises(SystemExit, match="no complete checkpoint"):
        export(monkeypatch, "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
