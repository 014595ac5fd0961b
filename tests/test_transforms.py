"""Eval/train transforms, the preprocessing config, the torch dataset and the imbalance helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.data import LesionDataset, LesionTable, balanced_sampler, build_cache, class_weights
from skinlesion.data.transforms import (
    Augmentation,
    FovCrop,
    Preprocessing,
    RandomAperture,
    RandomChannelGain,
    ShadesOfGray,
    eval_geometry,
    eval_transform,
    fov_region,
    resize_size,
    train_transform,
)

PRE = Preprocessing(input_size=48)


def as_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # HWC -> CHW


def test_eval_transform_same_for_pil_and_uint8_tensor() -> None:
    img = synthetic_lesion(0, (90, 70))
    from_pil = eval_transform(PRE)(img)
    from_tensor = eval_transform(PRE)(as_uint8_tensor(img))
    assert from_pil.shape == from_tensor.shape == (3, 48, 48)
    assert from_pil.dtype == from_tensor.dtype == torch.float32
    torch.testing.assert_close(from_pil, from_tensor, rtol=0, atol=1e-6)


def test_eval_transform_normalises_with_the_configured_mean_and_std() -> None:
    colour = (200, 120, 40)
    img = Image.new("RGB", (64, 50), colour)
    out = eval_transform(PRE)(img)
    expected = (torch.tensor(colour) / 255.0 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected.float(), rtol=0, atol=1e-4)
    assert out.std(dim=(1, 2)).max() < 1e-4  # a flat image stays flat


def test_eval_geometry_keeps_uint8_and_crops_the_centre() -> None:
    pre = Preprocessing(input_size=40, crop_pct=0.8)
    assert resize_size(pre) == 50
    img = Image.new("RGB", (100, 60), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 60))  # a white band on the far left is cropped away
    out = eval_geometry(pre)(img)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 40, 40)
    assert int(out.max()) == 0


def test_train_transform_shape_and_seeded_randomness() -> None:
    img = as_uint8_tensor(synthetic_lesion(1, (90, 70)))
    aug = Augmentation(rand_augment=True, random_erasing=0.5)
    transform = train_transform(PRE, aug)
    torch.manual_seed(0)
    a = transform(img)
    torch.manual_seed(0)
    b = transform(img)
    c = transform(img)
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)  # augmentation is random
    assert torch.isfinite(a).all()


def test_random_aperture_blacks_out_outside_a_circle_only() -> None:
    img = torch.full((3, 90, 120), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    out = RandomAperture(1.0)(img)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert int(out[:, 0, 0].max()) == 0 and int(out[:, -1, -1].max()) == 0  # corners fall outside the circle
    assert out[:, 45, 60].tolist() == [200, 200, 200]                        # the centre is untouched
    assert set(out.unique().tolist()) == {0, 200}                              # a hard mask, no new colours
    assert torch.equal(RandomAperture(0.0)(img), img)                          # p = 0 never applies it


def test_random_channel_gain_changes_the_balance_between_channels() -> None:
    img = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    out = RandomChannelGain(0.2)(img)
    per_channel = out[:, 0, 0].tolist()
    assert all(80 <= v <= 120 for v in per_channel) and len(set(per_channel)) > 1
    assert (out == out[:, :1, :1]).all()  # one gain per channel, the same for every pixel


def test_train_config_carries_and_checks_the_acquisition_augmentations() -> None:
    from skinlesion.training.config import TrainConfig
    from skinlesion.training.setup import augmentation_of

    aug = augmentation_of(TrainConfig(aperture=0.3, channel_gain=0.1))
    assert (aug.aperture, aug.channel_gain) == (0.3, 0.1)
    assert any(isinstance(op, RandomAperture) for op in train_transform(PRE, aug).transforms)
    with pytest.raises(ValueError, match="aperture"):
        TrainConfig(aperture=1.5)
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(aperture=0.3, fov_crop=True)


def test_preprocessing_timm_round_trip_through_json() -> None:
    pre = Preprocessing(input_size=96, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.9,
                        interpolation="bilinear")
    cfg = pre.to_timm()
    assert cfg["input_size"] == (3, 96, 96) and cfg["crop_mode"] == "center"
    assert Preprocessing.from_timm(cfg) == pre
    assert Preprocessing.from_timm(json.loads(json.dumps(cfg))) == pre  # lists after JSON, still equal
    assert Preprocessing.from_timm({}) == Preprocessing()


def test_preprocessing_rejects_what_it_cannot_reproduce() -> None:
    with pytest.raises(ValueError, match="only square"):
        Preprocessing.from_timm({"input_size": [3, 224, 192]})
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)
    with pytest.raises(ValueError, match="unknown interpolation 'lanczos3'"):
        Preprocessing(interpolation="lanczos3")


def test_class_weights_balance_the_classes() -> None:
    targets = [0] * 60 + [1] * 30 + [2] * 10  # class 3 absent
    weights = class_weights(targets, num_classes=4)
    counts = np.bincount(targets, minlength=4)
    assert weights.dtype == torch.float32 and weights.shape == (4,)
    assert weights[3] == 0  # an absent class gets no weight
    present = weights[:3]
    assert present.mean().item() == pytest.approx(1.0)
    totals = present.numpy() * counts[:3]  # every class contributes the same total weight
    np.testing.assert_allclose(totals, totals[0], rtol=1e-6)


def test_balanced_sampler_draws_classes_equally() -> None:
    targets = [0] * 900 + [1] * 90 + [2] * 10
    draws = []
    sampler = balanced_sampler(targets, num_classes=3, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        draws.extend(targets[i] for i in sampler)
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.03)
    again = list(balanced_sampler(targets, num_classes=3, generator=torch.Generator().manual_seed(0)))
    first = list(balanced_sampler(targets, num_classes=3, generator=torch.Generator().manual_seed(0)))
    assert again == first  # seeded


def test_balanced_sampler_power_goes_part_way() -> None:
    targets = [0] * 900 + [1] * 100
    sampler = balanced_sampler(targets, num_classes=2, generator=torch.Generator().manual_seed(0), power=0.5)
    draws = [targets[i] for _ in range(4) for i in sampler]
    share_minority = np.mean(np.asarray(draws) == 1)
    assert 0.15 < share_minority < 0.4  # sqrt weighting: 0.25 expected; unweighted 0.1, balanced 0.5


def test_lesion_dataset_with_cache(tmp_path: Path) -> None:
    rows = []
    for i, (label, size) in enumerate([("mel", (300, 200)), ("nv", (80, 60)), ("nv", (64, 64))]):
        path = tmp_path / f"img{i}.png"
        synthetic_lesion(i, size).save(path)
        rows.append({"image_id": f"img{i}", "path": str(path), "label": label, "group": f"img{i}"})
    table = LesionTable(frame=pd.DataFrame(rows), layout="synthetic", root=str(tmp_path))
    cache = build_cache(table.frame["path"].tolist(), short_side=64, threads=2)
    assert [tuple(t.shape) for t in cache] == [(3, 64, 96), (3, 60, 80), (3, 64, 64)]  # short side capped
    assert all(t.dtype == torch.uint8 for t in cache)
    classes = ["bkl", "mel", "nv"]
    cached = LesionDataset(table, classes, eval_transform(PRE), images=cache)
    lazy = LesionDataset(table, classes, eval_transform(PRE), short_side=64)
    assert cached.targets == [1, 2, 2]
    x, y = cached[0]
    assert x.shape == (3, 48, 48) and y == 1
    torch.testing.assert_close(lazy[0][0], x)  # lazy decoding gives the cached result
    with pytest.raises(ValueError, match=r"not among the model's classes"):
        LesionDataset(table, ["mel"], eval_transform(PRE))


def test_shades_of_gray_removes_a_colour_cast() -> None:
    img = as_uint8_tensor(synthetic_lesion(3, (120, 90)))
    cast = (img.float() * torch.tensor([1.0, 0.8, 0.6]).view(3, 1, 1)).round().to(torch.uint8)  # warm light
    fixed, fixed_cast = ShadesOfGray()(img), ShadesOfGray()(cast)
    assert fixed.dtype == torch.uint8 and fixed.shape == img.shape
    p_means = fixed.float().pow(6).mean(dim=(-2, -1)).pow(1 / 6)
    assert (p_means.max() - p_means.min()) / p_means.mean() < 0.03  # the illuminant is now grey
    # The same lesion under two lights has the same colours after correction (brightness is kept, so
    # compare chromaticity: each pixel's channels over their sum).
    def chroma(x):
        x = x.float() + 1.0
        return x / x.sum(dim=0, keepdim=True)

    assert (chroma(fixed) - chroma(fixed_cast)).abs().mean() < 0.005
    assert (chroma(img) - chroma(cast)).abs().mean() > 0.03
    batch = ShadesOfGray()(torch.stack([img, cast]))  # works on TTA stacks too, image by image
    assert torch.equal(batch[0], fixed) and torch.equal(batch[1], fixed_cast)


def test_color_constancy_is_part_of_the_stored_preprocessing() -> None:
    pre = Preprocessing(input_size=48, color_constancy="shades_of_gray")
    timm_cfg = json.loads(json.dumps(pre.to_timm()))
    assert "color_constancy" not in timm_cfg  # timm's PretrainedCfg rejects unknown keys
    assert Preprocessing.from_timm(timm_cfg, "shades_of_gray") == pre
    assert Preprocessing.from_timm(timm_cfg).color_constancy == "none"  # folders written before the option
    img = synthetic_lesion(4, (120, 90))
    assert not torch.allclose(eval_transform(pre)(img), eval_transform(PRE)(img))
    with pytest.raises(ValueError, match="color_constancy"):
        Preprocessing(color_constancy="retinex")


def framed(img: Image.Image, diameter: float, centre: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 (3, H, W): `img` seen through a circular dermatoscope field of view, black outside."""
    a = np.asarray(img).copy()
    h, w = a.shape[:2]
    cx, cy = centre or (w / 2, h / 2)
    yy, xx = np.mgrid[:h, :w]
    a[(xx - cx) ** 2 + (yy - cy) ** 2 > (diameter * min(h, w) / 2) ** 2] = 0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def test_fov_region_is_the_largest_black_free_square_inside_a_dermatoscope_circle() -> None:
    lesion = synthetic_lesion(5, (200, 150))
    x = framed(lesion, 0.9)
    x0, y0, x1, y1 = fov_region(x)
    side = 0.9 * 150 / 2 ** 0.5  # the square inscribed in the circle (1% black allowed: a little larger)
    assert side - 2 <= x1 - x0 <= 1.1 * side and side - 2 <= y1 - y0 <= 1.1 * side
    assert abs((x0 + x1) / 2 - 100) <= 2 and abs((y0 + y1) / 2 - 75) <= 2
    assert (x[:, y0:y1, x0:x1].amax(dim=0) < 16).float().mean() <= 0.01
    off = framed(lesion, 0.8, centre=(120, 70))  # an aperture need not be centred
    x0, y0, x1, y1 = fov_region(off)
    assert abs((x0 + x1) / 2 - 120) <= 3 and abs((y0 + y1) / 2 - 70) <= 3
    x0, y0, x1, y1 = fov_region(x)
    cropped = FovCrop()(x)
    assert tuple(cropped.shape) == (3, y1 - y0, x1 - x0) and torch.equal(cropped, x[:, y0:y1, x0:x1])
    assert (cropped.amax(dim=0) < 16).float().mean() <= 0.01


def test_fov_region_of_a_large_photo_is_found_on_a_subsample_and_mapped_back() -> None:
    big = framed(synthetic_lesion(8, (2400, 1800)), 0.9)  # a phone-camera-sized dermatoscope photo
    x0, y0, x1, y1 = fov_region(big)
    side = 0.9 * 1800 / 2 ** 0.5
    assert side - 20 <= x1 - x0 <= 1.1 * side and side - 20 <= y1 - y0 <= 1.1 * side
    assert abs((x0 + x1) / 2 - 1200) <= 15 and abs((y0 + y1) / 2 - 900) <= 15
    assert (big[:, y0:y1, x0:x1].amax(dim=0) < 16).float().mean() <= 0.015


def test_fov_crop_leaves_photos_without_a_black_surround_alone() -> None:
    lesion = torch.from_numpy(np.array(synthetic_lesion(6, (200, 150)))).permute(2, 0, 1).contiguous()
    assert fov_region(lesion) is None and torch.equal(FovCrop()(lesion), lesion)
    dark_middle = lesion.clone()
    dark_middle[:, 50:100, 70:130] = 0  # a black lesion, not a surround
    assert fov_region(dark_middle) is None
    one_corner = lesion.clone()
    one_corner[:, :30, :30] = 0  # a single dark corner (a shadow, a label)
    assert fov_region(one_corner) is None
    tiny = framed(synthetic_lesion(6, (200, 150)), 0.2)  # a pinhole: nothing sensible to crop to
    assert fov_region(tiny) is None


def test_fov_crop_is_part_of_the_stored_preprocessing_and_of_every_eval_path() -> None:
    pre = Preprocessing(input_size=48, fov_crop=True)
    assert Preprocessing.from_timm(json.loads(json.dumps(pre.to_timm())), fov_crop=True) == pre
    assert Preprocessing.from_timm(pre.to_timm()).fov_crop is False  # folders written before the option
    lesion = synthetic_lesion(7, (200, 150))
    x = framed(lesion, 0.9)
    assert torch.equal(eval_geometry(pre)(lesion), eval_geometry(PRE)(lesion))  # no surround: no change
    seen = eval_geometry(pre)(x)
    assert (seen.amax(dim=0) < 16).float().mean() <= 0.01  # the model no longer sees the black corners
    assert (eval_geometry(PRE)(x).amax(dim=0) < 16).float().mean() > 0.1
    # training crops first too, so the few HAM10000 photos with a surround are trained on as they are served
    assert isinstance(train_transform(pre, Augmentation()).transforms[1], FovCrop)
    assert not any(isinstance(t, FovCrop) for t in train_transform(PRE, Augmentation()).transforms)
    assert train_transform(pre, Augmentation())(x).shape == (3, 48, 48)
