"""Starting from ImageNet weights in a local file (timm's pretrained_cfg_overlay), offline.

Synthetic tests save a tiny timm model's own state dict as "the pretrained file"; the `realweights`
tests use the verified files in ../shared/pretrained and skip cleanly where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import synthetic_lesion
from safetensors.torch import load_file, save_file
from synthetic_training import make_imagefolder, tiny_config

from skinlesion.models.pretrained import (
    PretrainedWeightsError,
    check_weights_file,
    normalisation_for,
    sha256_of,
)
from skinlesion.training import loop as training
from skinlesion.training.config import TrainConfig

SHARED_PRETRAINED = Path(__file__).resolve().parents[1].parent / "shared" / "pretrained"
LITE0 = SHARED_PRETRAINED / "tf_efficientnet_lite0.in1k.safetensors"
LITE2 = SHARED_PRETRAINED / "tf_efficientnet_lite2.in1k.safetensors"
MOBILENET = SHARED_PRETRAINED / "mobilenetv2_100.tv_in1k.safetensors"


def needs_shared_weights():
    if not LITE0.is_file():
        pytest.skip("../shared/pretrained is not present")


def _imagenet_like_file(tmp_path: Path, arch: str = "test_efficientnet", seed: int = 0) -> Path:
    """A 1000-class state dict for `arch`, as the ImageNet files are."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=1000)
    path = tmp_path / f"{arch}.in1k.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- checks before any image is decoded ------------------------------------------------------------
def test_missing_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"nope\.safetensors: no such file"):
        check_weights_file(tmp_path / "nope.safetensors", "test_efficientnet")


@pytest.mark.parametrize("name, content", [("notes.pth", b"just some text\n"), ("broken.safetensors", b"\x00\x01garbage"),
                                           ("list.pth", None)])
def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        torch.save([1, 2, 3], path)  # a valid torch file, but not a mapping of tensors
    else:
        path.write_bytes(content)
    with pytest.raises(PretrainedWeightsError, match="not a") as err:
        check_weights_file(path, "test_efficientnet")
    assert name in str(err.value)


def test_weights_for_another_architecture_name_the_first_mismatched_key_and_shapes(tmp_path):
    model = timm.create_model("lesion_cnn", num_classes=1000, widths=(8, 16, 16, 32), hidden=16)
    path = tmp_path / "small_cnn.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(PretrainedWeightsError) as err:
        check_weights_file(path, "lesion_cnn")  # the default lesion_cnn is 64-128-256-512 wide
    assert "'stages.0.0.weight' has shape (8, 3, 3, 3) in the file, (64, 3, 3, 3) in the model" in str(err.value)


def test_weights_with_other_key_names_are_refused(tmp_path):
    path = _imagenet_like_file(tmp_path, arch="test_resnet")
    with pytest.raises(PretrainedWeightsError, match=r"does not fit test_efficientnet: key '[^']+' .* is missing"):
        check_weights_file(path, "test_efficientnet")


def test_a_pth_checkpoint_wrapping_a_state_dict_is_accepted(tmp_path):
    model = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    check_weights_file(path, "test_efficientnet")  # no error


def test_train_refuses_a_bad_file_before_decoding_any_image(tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "data", per_class=4)
    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded before the weights file was checked")

    monkeypatch.setattr(training, "build_cache", no_decoding)
    cfg = tiny_config(data, tmp_path / "out", model="test_efficientnet", model_args={}, pretrained_file=str(bad))
    with pytest.raises(PretrainedWeightsError, match="bad.pth: not a PyTorch state dict"):
        training.train(cfg)


def test_config_refuses_hub_and_file_together():
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(data="x", pretrained=True, pretrained_file="w.safetensors")
    with pytest.raises(ValueError, match="layer_decay"):
        TrainConfig(data="x", layer_decay=1.5)


# -- loading through timm, offline ------------------------------------------------------------------
def test_build_model_loads_the_file_through_timm_offline_with_a_fresh_zero_head(tmp_path, monkeypatch):
    path = _imagenet_like_file(tmp_path)
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TrainConfig(data="x", model="test_efficientnet", pretrained_file=str(path))
    model = training.build_model(cfg, ["bkl", "mel", "nv"])
    saved = load_file(str(path))
    state = model.state_dict()
    assert model.get_classifier().out_features == 3
    backbone = [k for k in saved if not k.startswith("classifier")]
    assert backbone and all(torch.equal(state[k], saved[k]) for k in backbone)
    assert torch.count_nonzero(model.get_classifier().weight) == 0  # fresh head starts at uniform predictions


def test_preprocessing_follows_the_weights():
    lite = training.preprocessing_of(TrainConfig(data="x", model="tf_efficientnet_lite0", pretrained_file="w"))
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    mobile = training.preprocessing_of(TrainConfig(data="x", model="mobilenetv2_100", pretrained_file="w"))
    assert mobile.mean == pytest.approx((0.485, 0.456, 0.406))
    scratch = training.preprocessing_of(TrainConfig(data="x", model="tf_efficientnet_lite0"))
    assert scratch.mean == pytest.approx((0.485, 0.456, 0.406))  # from scratch: the project default
    init = training.preprocessing_of(TrainConfig(data="x", model="lesion_cnn", init_from="f"),
                                     {"pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    assert init.mean == (0.5, 0.5, 0.5) and init.std == (0.25, 0.25, 0.25)


def test_a_run_from_a_file_records_its_provenance_and_normalisation(tmp_path):
    import json

    path = _imagenet_like_file(tmp_path)
    data = make_imagefolder(tmp_path / "data", per_class=6)
    cfg = tiny_config(data, tmp_path / "out", model="test_efficientnet", model_args={}, pretrained_file=str(path),
                      epochs=1, layer_decay=0.8)
    training.train(cfg)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    init = config["skinlesion"]["init_weights"]
    assert init == {"source": "file", "file": path.name, "sha256": sha256_of(path), "architecture": "test_efficientnet",
                    "licence_note": init["licence_note"]}
    assert "non-commercial" in init["licence_note"]
    norm = normalisation_for("test_efficientnet")
    assert tuple(config["pretrained_cfg"]["mean"]) == norm.mean and tuple(config["pretrained_cfg"]["std"]) == norm.std
    card = (tmp_path / "out" / "README.md").read_text()
    assert sha256_of(path) in card and path.name in card and "non-commercial" in card


# -- the verified ImageNet files in ../shared/pretrained ----------------------------------------------
@pytest.mark.parametrize("path, arch", [(LITE0, "tf_efficientnet_lite0"), (LITE2, "tf_efficientnet_lite2"),
                                        (MOBILENET, "mobilenetv2_100")])
def test_shared_files_fit_their_architecture(path, arch):
    needs_shared_weights()
    check_weights_file(path, arch)


def test_shared_mobilenet_file_is_refused_for_lite0_naming_key_and_shapes():
    needs_shared_weights()
    with pytest.raises(PretrainedWeightsError,
                       match=r"key 'blocks\.2\.0\.conv_dw\.weight' has shape \(144, 1, 3, 3\) in the file, "
                             r"\(144, 1, 5, 5\) in the model"):
        check_weights_file(MOBILENET, "tf_efficientnet_lite0")


def _cam_on_lesion(model: torch.nn.Module, mean, std, size: int = 160) -> np.ndarray:
    from skinlesion.data.transforms import Preprocessing, eval_transform
    from skinlesion.inference.cam import cam_target, compute_cam

    pre = Preprocessing(input_size=size, mean=tuple(mean), std=tuple(std))
    x = eval_transform(pre)(synthetic_lesion(3, size=(200, 150), label=1)).unsqueeze(0)
    assert cam_target(model).family == "efficientnet"
    with torch.no_grad():
        index = int(model(x).argmax())
    return compute_cam(model, x, index, method="gradcam")[0].numpy()


@pytest.mark.parametrize("path, arch", [(LITE0, "tf_efficientnet_lite0"), (MOBILENET, "mobilenetv2_100")])
def test_gradcam_on_imagenet_weights_is_a_smooth_informative_map(path, arch):
    """Not constant, not all zero, and not a grid of uniform blocks (the old 4x4-block complaint)."""
    needs_shared_weights()
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    cam = _cam_on_lesion(model, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    assert cam.shape == (160, 160)
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    assert cam.max() > 0.5 and cam.std() > 0.05               # not all zero, not constant
    assert len(np.unique(np.round(cam, 3))) > 100              # many levels, not a few blocks
    same_as_right = np.isclose(cam[:, 1:], cam[:, :-1], atol=1e-6).mean()
    assert same_as_right < 0.5                                 # neighbours differ: smooth, not piecewise constant


# -- the plain-timm lines the README and every model card show ---------------------------------------
def test_the_documented_plain_timm_lines_load_a_lesion_cnn_folder(tiny_model_folder):
    """Exactly the lines shown (README and card), in a fresh interpreter: nothing else registers lesion_cnn."""
    import subprocess
    import sys

    from skinlesion.models.card import PLAIN_TIMM_LINES, render_model_card

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    card = render_model_card(tiny_model_folder)
    for line in PLAIN_TIMM_LINES:
        assert line in readme and line in card
    script = "\n".join(PLAIN_TIMM_LINES).replace("PATH", str(tiny_model_folder))
    script += "\nprint(type(model).__name__, model.num_classes)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LesionCNN", "3"]
