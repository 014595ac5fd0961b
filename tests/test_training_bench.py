"""`skinlesion bench train`: both throughputs come from train()'s own code, and the JSON is complete."""

from __future__ import annotations

import json

import pytest

from skinlesion.bench import train as bench_train
from skinlesion.cli.main import main
from skinlesion.training import loop as training


def test_bench_runs_train_step_for_both_measurements_and_prints_json(monkeypatch, capsys):
    calls = {"train_step": 0, "build_datasets": 0}
    real_step, real_datasets = training.train_step, training.build_datasets

    def counting_step(*args, **kwargs):
        calls["train_step"] += 1
        return real_step(*args, **kwargs)

    def counting_datasets(*args, **kwargs):
        calls["build_datasets"] += 1
        return real_datasets(*args, **kwargs)

    monkeypatch.setattr(bench_train, "train_step", counting_step)
    monkeypatch.setattr(bench_train, "build_datasets", counting_datasets)
    assert main(["bench", "train", "--model", "lesion_cnn", "--image-size", "32", "--batch-size", "8",
                 "--steps", "2", "--warmup", "1", "--images", "48", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert calls == {"train_step": 3 * 2 + 2 * 1, "build_datasets": 1}  # bare, loop, bare + 2 warm-ups
    assert result["model"] == "lesion_cnn" and result["image_size"] == 32 and result["batch_size"] == 8
    assert result["loop_images_per_s"] > 0 and result["bare_step_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["loop_images_per_s"] / result["bare_step_images_per_s"], rel=0.05)
    assert result["data"] == "synthetic" and result["workers"] == 0


def test_synthetic_images_have_the_cached_size_and_every_class(tmp_path):
    root = bench_train.write_synthetic_imagefolder(tmp_path, n_images=6, short_side=40)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 6
    assert sorted({f.parent.name for f in files}) == sorted(bench_train.SYNTHETIC_CLASSES)
    from PIL import Image

    assert Image.open(files[0]).size == (53, 40)
