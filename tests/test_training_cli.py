"""The two entry points: `python train.py ...` and `accelerate launch train.py ...` on synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_training import make_imagefolder, tiny_config, write_recipe

REPO = Path(__file__).resolve().parents[1]


def run(prefix: list[str], tmp_path: Path, *extra: str, epochs: int = 1) -> tuple[subprocess.CompletedProcess, Path]:
    data = make_imagefolder(tmp_path / "data", per_class=8)
    out = tmp_path / "out"
    recipe = write_recipe(tiny_config(data, out, epochs=epochs, batch_size=4), tmp_path / "tiny.json")
    cmd = [*prefix, str(REPO / "train.py"), "--config", str(recipe), "--data", str(data), "--output-dir", str(out),
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400), out


def test_python_train_py_trains_and_prints_the_summary(tmp_path):
    proc, out = run([sys.executable], tmp_path, "--epochs", "1", epochs=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["num_processes"] == 1  # --epochs on the CLI beats the recipe
    assert summary["command"].startswith("python train.py --config ") and summary["command"].endswith("--epochs 1")
    assert "CPU cores" in summary["machine"]
    from skinlesion.models.card import render_model_card

    assert f"- Command: `{summary['command']}`" in render_model_card(out)  # the card says how to reproduce it
    printed = json.loads(proc.stdout[proc.stdout.rindex("\n{"):])
    assert printed["best"]["epoch"] == summary["best"]["epoch"]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


@pytest.mark.slow
def test_python_train_py_bad_model_fails_with_the_reason(tmp_path):
    proc, out = run([sys.executable], tmp_path, "--model", "resnet_nope")
    assert proc.returncode != 0
    assert "unknown model 'resnet_nope'" in proc.stderr
    assert not (out / "history.csv").exists()


@pytest.mark.slow
def test_accelerate_launch_train_py_single_process(tmp_path):
    proc, out = run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "train_summary.json").read_text())["epochs_run"] == 1


@pytest.mark.slow
def test_python_train_py_tune(tmp_path):
    proc, out = run([sys.executable], tmp_path, "--tune", "2", "--tune-epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "tuning_results.md").is_file() and (out / "trial-001" / "model.safetensors").is_file()
