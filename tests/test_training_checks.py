"""Bad input fails before training starts: before a single image is decoded, with a message naming the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from synthetic_training import make_imagefolder, tiny_config

from skinlesion.hub import HubUnavailableError
from skinlesion.models import UnknownModelError
from skinlesion.training import loop as training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data"), per_class=6)


@pytest.fixture(autouse=True)
def no_decoding(monkeypatch):
    """Decoding the images is the slow part of start-up: every check here must fail before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the image cache was built before the bad input was noticed")

    monkeypatch.setattr(training, "build_cache", refuse)


def fails_fast(cfg, error, match: str, limit_s: float = 10.0) -> None:
    t0 = time.perf_counter()
    with pytest.raises(error, match=match):
        training.train(cfg)
    assert time.perf_counter() - t0 < limit_s


def test_unknown_model_name(data, tmp_path):
    fails_fast(tiny_config(data, tmp_path / "out", model="resnet_nope", model_args={}), UnknownModelError,
               "unknown model 'resnet_nope'")


def test_init_from_with_another_class_count(data, tmp_path, tiny_model_folder):
    four = make_imagefolder(tmp_path / "four", classes=("bkl", "df", "mel", "nv"), per_class=6)
    cfg = tiny_config(four, tmp_path / "out", init_from=str(tiny_model_folder))
    fails_fast(cfg, training.TrainingSetupError, r"has 3 classes \['bkl', 'mel', 'nv'\], the data has 4")


def test_init_from_with_another_architecture(data, tmp_path, tiny_model_folder):
    cfg = tiny_config(data, tmp_path / "out", model="resnet18", model_args={}, init_from=str(tiny_model_folder))
    fails_fast(cfg, training.TrainingSetupError, "is a lesion_cnn, but --model is resnet18")


def test_empty_validation_split(data, tmp_path):
    fails_fast(tiny_config(data, tmp_path / "out", val_fraction=0.0), training.TrainingSetupError,
               "the val split has no images.*--val-fraction")


def test_training_split_smaller_than_a_batch(data, tmp_path):
    fails_fast(tiny_config(data, tmp_path / "out", batch_size=64), training.TrainingSetupError,
               "fewer than one batch.*--batch-size")


def test_unwritable_output_folder(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # root ignores permission bits, but not a file in the way
    fails_fast(tiny_config(data, blocker / "out"), training.TrainingSetupError, "is not writable")


def test_checkpoints_of_an_earlier_run_need_resume(data, tmp_path):
    from skinlesion.models import create_model
    from skinlesion.training.checkpoint import save_checkpoint

    out = tmp_path / "out"
    save_checkpoint(out / "checkpoints", 5, model=create_model("lesion_cnn", 3, widths=(4, 4, 4, 4), hidden=4),
                    ema=None, state={"epoch": 1})
    fails_fast(tiny_config(data, out), training.TrainingSetupError, "pass --resume")


def test_push_to_hub_while_offline(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails_fast(tiny_config(data, tmp_path / "out", push_to_hub="someone/model"), HubUnavailableError,
               "HF_HUB_OFFLINE=1")


def test_push_to_hub_without_a_token(data, tmp_path, monkeypatch):
    import huggingface_hub

    from skinlesion import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)

    def no_network(*args, **kwargs):
        raise AssertionError("the token is checked before the network")

    monkeypatch.setattr(hub, "_connect", no_network)
    fails_fast(tiny_config(data, tmp_path / "out", push_to_hub="someone/model"), HubUnavailableError,
               "no Hugging Face token")


def test_push_to_hub_with_a_malformed_repo_id(data, tmp_path):
    fails_fast(tiny_config(data, tmp_path / "out", push_to_hub="just-a-name"), ValueError, "owner/name")


def test_pretrained_while_offline_fails_in_seconds(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails_fast(tiny_config(data, tmp_path / "out", model="resnet18", model_args={}, pretrained=True),
               HubUnavailableError, "--pretrained", limit_s=5.0)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="tta must be one of"):
        tiny_config(Path("x"), Path("y"), tta="sideways")
    with pytest.raises(ValueError, match="scale_min"):
        tiny_config(Path("x"), Path("y"), scale_min=0.0)
    with pytest.raises(ValueError, match="sampling_power"):
        tiny_config(Path("x"), Path("y"), sampling="balanced", sampling_power=0.0)


def test_sampling_power_reaches_the_train_loader(monkeypatch):
    """`--sampling-power` is not just stored: the loader's sampler is built with it."""
    seen = {}

    def record(targets, num_classes, generator=None, power=1.0):
        seen["power"] = power
        return torch.utils.data.SequentialSampler(targets)

    monkeypatch.setattr(training, "balanced_sampler", record)
    ds = type("DS", (), {"targets": [0, 1, 1], "class_to_idx": {"a": 0, "b": 1}, "__len__": lambda self: 3})()
    cfg = tiny_config(Path("x"), Path("y"), sampling="balanced", sampling_power=0.5, workers=0)
    training.make_loader(ds, cfg, train=True, generator=torch.Generator())
    assert seen["power"] == 0.5
