"""Models by name through timm: our two registered architectures and the named timm ones."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import SEModule

import skinlesion.models  # noqa: F401  (registers densenet201_se and lesion_cnn with timm)
from skinlesion.models import UnknownModelError, check_model_name, create_model


@pytest.mark.parametrize("name", ["densenet201_se", "lesion_cnn"])
def test_our_models_create_by_name_through_timm_and_forward_at_64px(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_densenet201_se_has_se_after_each_dense_block_and_keeps_densenet201_names():
    se_model = timm.create_model("densenet201_se", num_classes=7)
    plain = timm.create_model("densenet201", num_classes=7)
    se_state, plain_state = se_model.state_dict(), plain.state_dict()
    # Every densenet201 tensor is there under the same name and shape: ImageNet weights load as they are.
    assert set(plain_state) <= set(se_state)
    assert all(se_state[k].shape == v.shape for k, v in plain_state.items())
    extra = sorted({k.split(".")[1] for k in set(se_state) - set(plain_state)})
    assert extra == ["se1", "se2", "se3", "se4"]
    names = [n for n, _ in se_model.features.named_children()]
    for i in range(1, 5):
        assert names[names.index(f"denseblock{i}") + 1] == f"se{i}"
        se = getattr(se_model.features, f"se{i}")
        assert isinstance(se, SEModule)
        # The SE width equals its block's output width (the next norm's width).
        following = se_model.features[names.index(f"se{i}") + 1]
        norm = next(m for m in following.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert se.fc1.in_channels == norm.num_features


def test_lesion_cnn_structure():
    model = timm.create_model("lesion_cnn", num_classes=5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    assert (model.fc1.in_features, model.fc1.out_features) == (512, 128)
    assert (model.fc.in_features, model.fc.out_features) == (128, 5)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "efficientnet_b3", "densenet121"])
def test_named_timm_architectures_create_with_seven_classes(name):
    model = create_model(name, 7)
    assert model.get_classifier().out_features == 7


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(UnknownModelError, match="unknown model 'resnet_999'"):
        check_model_name("resnet_999")
