"""CAM registry, target layers per family, hook hygiene, TTA consistency and the map's geometry."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
import timm
import torch
import torch.nn as nn
from conftest import synthetic_lesion
from PIL import Image

from skinlesion import models as _models  # noqa: F401  (registers lesion_cnn and densenet201_se)
from skinlesion.data.transforms import Preprocessing, eval_geometry
from skinlesion.inference import cam
from skinlesion.inference.overlay import heatmap_to_original, image_region, input_box, overlay_heatmap
from skinlesion.inference.tta import get_views

FAMILIES = [
    ("resnet18", {}, "resnet"),
    ("densenet121", {}, "densenet"),
    ("densenet201_se", {}, "densenet"),
    ("efficientnet_b0", {}, "efficientnet"),
    ("mobilenetv3_small_100", {}, "mobilenetv3"),
    ("convnext_atto", {}, "convnext"),
    ("vit_tiny_patch16_224", {"img_size": 64}, "vit"),
    ("deit_tiny_distilled_patch16_224", {"img_size": 64}, "vit"),
    ("lesion_cnn", {"widths": (8, 16, 16, 32), "hidden": 16}, "lesion_cnn"),
]


def tiny_lesion_cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("lesion_cnn", num_classes=3, widths=(8, 16, 16, 32), hidden=16).eval()


def lesion_batch(n: int = 1, size: int = 64) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(np.array(synthetic_lesion(s, size=(size, size)))).permute(2, 0, 1)
                     for s in range(n)]).float() / 255.0
    return (x - 0.5) / 0.25


@pytest.mark.parametrize(("name", "kwargs", "family"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_family_gives_a_valid_map(name, kwargs, family):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **kwargs).eval()
    target = cam.cam_target(model)
    assert target.family == family
    x = lesion_batch()
    with torch.no_grad():
        logits = model(x)[0]
    # Grad-CAM is ReLU'd: on a random model a class may have no positive evidence at all (a zero map),
    # so explain classes best-first and require a non-constant map for the first one that has any.
    for c in logits.argsort(descending=True).tolist():
        m = cam.compute_cam(model, x, c)
        assert m.shape == (1, 64, 64) and m.dtype == torch.float32
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
        if float(m.std()) > 0.01:
            break
    else:
        pytest.fail(f"every class gave a constant map for {name}")
    assert not target.layer._forward_hooks and not target.layer._backward_hooks


def test_mobilenetv3_target_is_spatial_not_conv_head():
    model = timm.create_model("mobilenetv3_small_100", num_classes=3).eval()
    seen = {}

    def record(module, args, output):
        seen["shape"] = output.shape

    handle = cam.cam_target(model).layer.register_forward_hook(record)
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    handle.remove()
    assert seen["shape"][-1] > 1  # conv_head sees 1x1 features after global pooling


def test_unknown_family_is_a_clear_error():
    with pytest.raises(cam.UnsupportedModelError, match="Sequential.*supported families"):
        cam.cam_target(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))


@pytest.mark.parametrize("method", sorted(cam.CAM_METHODS))
def test_every_registered_method_runs(method):
    model = tiny_lesion_cnn()
    maps = cam.compute_cam(model, lesion_batch(2), [0, 2], method=method)
    assert maps.shape == (2, 64, 64)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_registry_is_case_insensitive_and_rejects_unknown_names():
    assert cam.get_cam_method("GradCAM++") is cam.CAM_METHODS["gradcam++"]
    with pytest.raises(ValueError, match="unknown CAM method 'magic'.*gradcam"):
        cam.get_cam_method("magic")


def test_runs_under_inference_mode():
    model = tiny_lesion_cnn()
    x = lesion_batch()
    reference = cam.compute_cam(model, x, 1)
    with torch.inference_mode():
        inside = cam.compute_cam(model, x, 1)
        x_inference = x.clone()  # an inference tensor, as evaluation code may hand over
        from_inference_tensor = cam.compute_cam(model, x_inference, 1)
    torch.testing.assert_close(inside, reference)
    torch.testing.assert_close(from_inference_tensor, reference)
    assert float(inside.std()) > 0


def test_tta_map_is_flip_equivariant():
    # The flips form a group, so the TTA-averaged map of a flipped image is the flipped map.
    model = tiny_lesion_cnn()
    x = lesion_batch()
    views = get_views("flips")
    direct = cam.compute_cam(model, x, 1, views=views)
    of_flipped = cam.compute_cam(model, x.flip(-1), 1, views=views)
    torch.testing.assert_close(of_flipped, direct.flip(-1), atol=1e-5, rtol=1e-4)
    # Without TTA this does not hold for a model that is not itself flip-invariant.
    plain = cam.compute_cam(model, x, 1)
    assert not torch.allclose(cam.compute_cam(model, x.flip(-1), 1), plain.flip(-1), atol=1e-3)


def test_graph_cut_gives_the_same_map_as_full_backward():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_lesion_cnn()
    x = lesion_batch()
    layer = cam.cam_target(model).layer
    reference = GradCAM(model=model, target_layers=[layer])
    try:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    finally:
        reference.activations_and_grads.release()
    np.testing.assert_allclose(cam.compute_cam(model, x, 1)[0].numpy(), expected[0], atol=1e-5)


def test_hooks_removed_and_no_growth_over_200_calls():
    model = tiny_lesion_cnn()
    layer = cam.cam_target(model).layer
    x = lesion_batch()
    views = get_views("flips")
    process = psutil.Process()
    for _ in range(20):
        cam.compute_cam(model, x, 1, views=views)
    gc.collect()
    before = process.memory_info().rss
    for _ in range(200):
        cam.compute_cam(model, x, 1, views=views)
    gc.collect()
    growth = process.memory_info().rss - before
    assert not layer._forward_hooks and not layer._backward_hooks and not layer._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())
    assert growth < 30 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 200 calls"


def test_errors_propagate_and_hooks_are_still_removed():
    # pytorch-grad-cam's own `with` block prints and swallows IndexError; ours must raise it.
    model = tiny_lesion_cnn()
    layer = cam.cam_target(model).layer
    with pytest.raises(IndexError):
        cam.compute_cam(model, lesion_batch(), 7)  # the model has 3 classes
    assert not layer._forward_hooks and not layer._backward_hooks


def test_class_index_count_must_match_batch():
    with pytest.raises(ValueError, match="2 class indices for a batch of 3"):
        cam.compute_cam(tiny_lesion_cnn(), lesion_batch(3), [0, 1])


# -- geometry back to the original image -----------------------------------------------------------

@pytest.mark.parametrize("size", [(150, 100), (90, 160), (64, 64), (300, 299)])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
def test_input_box_inverts_eval_geometry(size, crop_pct):
    # Encode each original pixel's coordinates in its colour, run the real eval geometry, read them back.
    w, h = size
    pre = Preprocessing(input_size=32, crop_pct=crop_pct, interpolation="bilinear")
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    coords = np.stack([xx * 255.0 / (w - 1), yy * 255.0 / (h - 1), np.zeros_like(xx)], axis=-1)
    seen = eval_geometry(pre)(Image.fromarray(coords.round().astype(np.uint8))).numpy().astype(np.float64)
    box = input_box(size, pre)
    u = np.arange(32) + 0.5
    expected_x = box.left + u * box.width / 32 - 0.5
    expected_y = box.top + u * box.height / 32 - 0.5
    got_x = seen[0][16] * (w - 1) / 255.0
    got_y = seen[1][:, 16] * (h - 1) / 255.0
    tol = 1.5 * max(w, h) / 255 + 1.0  # colour quantisation + one pixel
    np.testing.assert_allclose(got_x[2:-2], expected_x[2:-2], atol=tol)
    np.testing.assert_allclose(got_y[2:-2], expected_y[2:-2], atol=tol)


def test_input_box_inverts_the_field_of_view_crop_too():
    # As above, inside a dermatoscope circle (blue channel lit, so nothing inside is black) off the centre.
    w, h = 240, 180
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear", fov_crop=True)
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    coords = np.stack([xx * 255.0 / (w - 1), yy * 255.0 / (h - 1), np.full_like(xx, 255)], axis=-1)
    coords[(xx - 140) ** 2 + (yy - 95) ** 2 > 70 ** 2] = 0
    img = Image.fromarray(coords.round().astype(np.uint8))
    region = image_region(img, pre)
    assert region is not None and image_region(img, Preprocessing(input_size=32)) is None
    seen = eval_geometry(pre)(img).numpy().astype(np.float64)
    box = input_box((w, h), pre, region)
    assert region[0] <= box.left < box.left + box.width <= region[2] + 1
    u = np.arange(32) + 0.5
    tol = 1.5 * w / 255 + 1.0
    np.testing.assert_allclose((seen[0][16] * (w - 1) / 255.0)[2:-2], (box.left + u * box.width / 32 - 0.5)[2:-2], atol=tol)
    np.testing.assert_allclose((seen[1][:, 16] * (h - 1) / 255.0)[2:-2], (box.top + u * box.height / 32 - 0.5)[2:-2],
                               atol=tol)
    heat = heatmap_to_original(np.ones((32, 32), np.float32), (w, h), pre, region)
    assert heat[:, : region[0]].max() == 0.0 and heat[95, 140] == pytest.approx(1.0)  # nothing outside the crop


def test_heatmap_to_original_places_the_map_in_the_crop():
    pre = Preprocessing(input_size=32, crop_pct=0.875)
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[:, 16:] = 1.0  # right half of the model input
    full = heatmap_to_original(heat, (200, 100), pre)
    box = input_box((200, 100), pre)
    assert full.shape == (100, 200) and full.dtype == np.float32
    assert full[:, : int(box.left)].max() == 0.0 and full[:, int(box.left + box.width) + 1:].max() == 0.0
    centre = int(box.left + box.width / 2)
    assert full[50, centre + 3] == pytest.approx(1.0) and full[50, centre - 3] == pytest.approx(0.0)


def test_overlay_validates_and_keeps_the_input():
    img = Image.new("RGB", (20, 10), (10, 200, 10))
    heat = np.ones((10, 20), dtype=np.float32)
    out = overlay_heatmap(img, heat, alpha=0.5)
    assert out.size == img.size and img.getpixel((0, 0)) == (10, 200, 10)
    assert out.getpixel((0, 0)) != (10, 200, 10)
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(img, np.ones((5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(img, heat, alpha=-0.1)
