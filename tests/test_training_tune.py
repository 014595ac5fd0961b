"""`train.py --tune N`: Optuna trials, each a short train() in its own folder, and the results table."""

from __future__ import annotations

import csv
import sys

import pytest
from synthetic_training import make_imagefolder, tiny_config

from skinlesion.training import tuning
from skinlesion.training.config import LOSSES


def test_two_trials_write_their_folders_and_a_results_table(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=8)
    out = tmp_path / "tune"
    result = tuning.tune(tiny_config(data, out, epochs=5, batch_size=4), trials=2, epochs=1)
    with (out / tuning.RESULTS_CSV).open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["trial"]) for r in rows) == [0, 1]
    scores = [float(r["val_balanced_accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and 0.0 <= scores[0] <= 1.0
    assert result["best_val_balanced_accuracy"] == pytest.approx(scores[0])
    assert rows[0]["lr"] != rows[1]["lr"] and rows[0]["loss"] in LOSSES
    for trial in (0, 1):
        folder = out / f"trial-{trial:03d}"
        assert (folder / "model.safetensors").is_file()
        assert len((folder / "history.csv").read_text().strip().splitlines()) == 2  # --tune-epochs 1
        # every trial trained on the one split made up front
        assert (folder / "split_manifest.csv").read_text() == (out / "split_manifest.csv").read_text()
    md = (out / tuning.RESULTS_MD).read_text()
    assert md.count("\n| ") == 3 and "val_balanced_accuracy" in md  # header + 2 trials


def test_missing_optuna_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    with pytest.raises(tuning.TuningUnavailableError, match="pip install"):
        tuning.tune(tiny_config(tmp_path, tmp_path / "out"), trials=1)
