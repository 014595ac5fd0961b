"""DDP on CPU: two gloo processes really train together (issue #3).

`accelerate launch --cpu --num_processes 2` starts ONE process; these are the launches that give a
world of two on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_training import make_imagefolder, tiny_config, write_recipe

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_shard_sync_and_only_rank0_writes(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    out, reports = tmp_path / "out", tmp_path / "reports"
    reports.mkdir()
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TESTS / "ddp_check.py"), str(data), str(out), str(reports)], cwd=tmp_path)
    r0, r1 = (json.loads((reports / f"rank{i}.json").read_text()) for i in (0, 1))

    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["distributed_type"].endswith("MULTI_CPU")
    # Each rank draws its own half of the epoch: no sample on both, together (nearly) all of them.
    assert len(r0["indices"]) == len(r1["indices"]) > 0
    assert not set(r0["indices"]) & set(r1["indices"])
    assert len(set(r0["indices"]) | set(r1["indices"])) >= r0["n_train"] - 2 * 4  # drop_last: < one global batch lost
    # Same start, and the all-reduced steps keep the parameters identical (and they did change).
    assert r0["checksum_before"] == r1["checksum_before"]
    assert r0["checksum_after"] == r1["checksum_after"] != r0["checksum_before"]
    # The real train(): both in one world, only rank 0 touched the output folder.
    assert r0["train_num_processes"] == r1["train_num_processes"] == 2
    assert r0["writes_under_output"], "the audit hook saw no write at all on rank 0"
    assert r1["writes_under_output"] == []
    assert (out / "model.safetensors").is_file()
    assert len((out / "history.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch


@pytest.mark.slow
def test_accelerate_launch_multi_gpu_flag_gives_two_cpu_processes(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    out = tmp_path / "out"
    recipe = write_recipe(tiny_config(data, out, epochs=1, batch_size=4), tmp_path / "tiny.json")
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()),
         str(REPO / "train.py"), "--config", str(recipe), "--data", str(data), "--output-dir", str(out)], cwd=tmp_path)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["epochs_run"] == 1
