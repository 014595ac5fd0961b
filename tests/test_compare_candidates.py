"""scripts/compare_candidates.py: two comparisons sharing one --out (one per core) keep every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from synthetic_training import make_imagefolder, tiny_config, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_parallel_comparisons_sharing_an_output_folder_keep_every_candidate(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=12)
    out = tmp_path / "cmp"
    recipes = []
    for name, overrides in (("a_plain", {}), ("b_sog", {"color_constancy": "shades_of_gray"})):
        cfg = tiny_config(data, tmp_path / "unused", **overrides)
        recipes.append(write_recipe(cfg, tmp_path / f"candidate_{name}.json"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_candidates.py"), "--data", str(data), "--out", str(out),
           "--epochs", "1", "--limit-train-batches", "2", "--batch-size", "8"]
    procs = [subprocess.Popen([*cmd, str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in recipes]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs

    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["recipe"] for r in rows) == sorted(str(r) for r in recipes)
    assert {r["recipe"]: r["color_constancy"] for r in rows}[str(recipes[1])] == "shades_of_gray"
    assert all(0 <= r["val_balanced_accuracy"] <= 1 and r["cpu_minutes"] >= 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "candidate_a_plain" in table and "candidate_b_sog" in table

    # Rerunning skips finished candidates: nothing is trained again and the rows are unchanged.
    again = subprocess.run([*cmd, *map(str, recipes)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "train " not in again.stdout  # no "train N / val M images" banner: no candidate was retrained
    assert json.loads((out / "results.json").read_text()) == rows
