"""Resume after SIGKILL, and checkpoints that can never be half-read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from synthetic_training import make_imagefolder, tiny_config, write_recipe

from skinlesion.models import create_model
from skinlesion.models.folder import load_model_folder
from skinlesion.training import checkpoint
from skinlesion.training import loop as training

REPO = Path(__file__).resolve().parents[1]


def tiny_net() -> torch.nn.Module:
    return create_model("lesion_cnn", 3, widths=(4, 4, 4, 4), hidden=4)


def save(root: Path, step: int, **state) -> Path:
    return checkpoint.save_checkpoint(root, step, model=tiny_net(), ema=None, state={"epoch": 0, **state})


def test_incomplete_folder_is_never_the_latest(tmp_path):
    good = save(tmp_path, 3)
    half = tmp_path / ".incomplete-abc123"  # a save killed before its rename
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    (half / "state.pt").write_bytes(b"partial")
    assert checkpoint.latest_checkpoint(tmp_path) == good
    (tmp_path / "LATEST").write_text(half.name)  # even if something pointed at it
    assert checkpoint.latest_checkpoint(tmp_path) == good


def test_latest_pointing_at_a_missing_folder_is_not_used(tmp_path):
    assert checkpoint.latest_checkpoint(tmp_path) is None
    (tmp_path / "LATEST").write_text("step-00000099")
    assert checkpoint.latest_checkpoint(tmp_path) is None
    older = save(tmp_path, 4)
    (tmp_path / "LATEST").write_text("step-00000099")
    assert checkpoint.latest_checkpoint(tmp_path) == older  # the newest complete folder instead


def test_saving_the_same_step_twice_never_overwrites_the_latest(tmp_path):
    first = save(tmp_path, 7, batch=5)
    second = save(tmp_path, 7, batch=0)
    assert first != second and first.is_dir() and second.is_dir()
    assert checkpoint.latest_checkpoint(tmp_path) == second
    for step in (8, 9):
        save(tmp_path, step)
    kept = sorted(p.name for p in tmp_path.glob("step-*"))
    assert kept == ["step-00000008", "step-00000009"]  # KEEP = 2, oldest removed
    assert not list(tmp_path.glob(".incomplete-*"))


def test_checkpoint_state_round_trips_rng_and_weights(tmp_path):
    torch.manual_seed(123)
    net = tiny_net()
    saved = checkpoint.save_checkpoint(tmp_path, 1, model=net, ema=net, state={"rng": checkpoint.rng_state()})
    expected = torch.rand(3)
    other = tiny_net()
    state = checkpoint.load_checkpoint(saved, model=other, ema=None)
    checkpoint.set_rng_state(state["rng"])
    torch.testing.assert_close(torch.rand(3), expected)
    for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_with_only_a_dangling_pointer_starts_from_scratch(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", per_class=6)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "LATEST").write_text("step-00000042")
    summary = training.train(tiny_config(data, out, epochs=1, batch_size=4, resume=True))
    assert "no checkpoint" in capsys.readouterr().out
    assert summary["epochs_run"] == 1


def read_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_completes_the_run(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=16)  # 36 train images -> 9 batches of 4 per epoch
    out = tmp_path / "out"
    epochs = 3
    recipe = write_recipe(tiny_config(data, out, epochs=epochs, batch_size=4, checkpoint_minutes=0.001, ema=True),
                          tmp_path / "tiny.json")
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(recipe), "--data", str(data), "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            latest = checkpoint.latest_checkpoint(out / "checkpoints")
            if latest is not None:
                state = read_state(latest)
                if state["batch"] > 0 and state["epoch"] >= 1:  # mid-epoch, in the second epoch or later
                    proc.send_signal(signal.SIGKILL)
                    killed_at = (state["epoch"], state["batch"])
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, f"no mid-epoch checkpoint appeared: {proc.stderr.read().decode()[-3000:]}"
    assert not (out / "train_summary.json").exists()

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "batch" in resumed.stdout
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, epochs + 1)]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_run"] == epochs
    final = read_state(checkpoint.latest_checkpoint(out / "checkpoints"))
    assert (final["epoch"], final["batch"]) == (epochs, 0)
    assert final["num_updates"] == epochs * 9  # no step lost or repeated across the kill
    loaded = load_model_folder(out)
    assert loaded.label_names == ["bkl", "mel", "nv"]
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
