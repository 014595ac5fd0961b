"""Train and eval transform factories, built from a model's preprocessing config (timm's data config).

Both work on uint8 CHW tensors (what the decode cache holds) and on PIL images, so the training
loop never re-decodes JPEGs and the Predictor and evaluation share `eval_transform` exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torchvision.transforms import InterpolationMode, v2

from ..constants import (
    COLOR_CONSTANCY,
    DEFAULT_CROP_PCT,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_INTERPOLATION,
    DEFAULT_MEAN,
    DEFAULT_STD,
)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become model input; stored in the model folder as timm's `pretrained_cfg` fields."""

    input_size: int = DEFAULT_IMAGE_SIZE
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    # Per-image illuminant correction before normalisation ("none" or "shades_of_gray"). Dermatoscopes
    # and cameras differ in white balance from clinic to clinic; normalising it is the standard defence
    # (Barata et al. 2015; used by ISIC 2018/2019 winners) and costs nothing at inference.
    color_constancy: str = "none"
    # Crop to the dermatoscope's field of view first when the photo shows its black surround (`FovCrop`):
    # an uncropped contact dermatoscope delivers a bright disc in black corners, which HAM10000 (cropped)
    # rarely shows; the black is not image content, and the not-a-dermoscopic-image check read it as
    # evidence (README "Not a dermoscopic image?"). Photos without a black surround are untouched.
    fov_crop: bool = False

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive; got {self.mean}, {self.std}")
        _interp(self.interpolation)  # fail here, not at the first batch
        if self.color_constancy not in COLOR_CONSTANCY:
            raise ValueError(f"color_constancy must be one of {COLOR_CONSTANCY}, got {self.color_constancy!r}")

    def to_timm(self) -> dict:
        return {"input_size": (3, self.input_size, self.input_size), "mean": tuple(self.mean),
                "std": tuple(self.std), "crop_pct": self.crop_pct, "crop_mode": "center",
                "interpolation": self.interpolation}

    @classmethod
    def from_timm(cls, cfg: dict, color_constancy: str = "none", fov_crop: bool = False) -> Preprocessing:
        """From timm's pretrained_cfg; colour constancy and the field-of-view crop are not timm fields (timm's
        PretrainedCfg rejects unknown keys), so the model folder keeps them beside pretrained_cfg."""
        size = cfg.get("input_size", (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))
        if isinstance(size, int):
            size = (3, size, size)
        if len(size) != 3 or int(size[-1]) != int(size[-2]):
            raise ValueError(f"input_size {tuple(size)} is not (3, S, S); only square inputs are supported")
        if cfg.get("crop_mode", "center") != "center":
            raise ValueError(f"crop_mode {cfg['crop_mode']!r} is not supported; only 'center'")
        return cls(input_size=int(size[-1]), mean=tuple(float(v) for v in cfg.get("mean", DEFAULT_MEAN)),
                   std=tuple(float(v) for v in cfg.get("std", DEFAULT_STD)),
                   crop_pct=float(cfg.get("crop_pct", DEFAULT_CROP_PCT)),
                   interpolation=str(cfg.get("interpolation", DEFAULT_INTERPOLATION)),
                   color_constancy=str(color_constancy), fov_crop=bool(fov_crop))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation strength; the defaults suit training from scratch on ~8k images."""

    scale_min: float = 0.35          # RandomResizedCrop lower area bound: zoomed-in crops mimic other clinics
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect range; resizing it to a square distorts by up to this
    # Probability of placing the image on a larger black canvas first (side 1-1.5x): smaller lesions with dark
    # borders, as in other clinics' wider dermoscope fields of view (ISIC 2017's images show the black rim).
    zoom_out: float = 0.0
    # Probability of a random circular field of view (black outside), as an uncropped contact dermatoscope
    # delivers it: the "microscope" augmentation of the ISIC 2020 winning entries. Without it a HAM10000
    # model (and its not-a-dermoscopic-image check) treats a black rim as evidence (README, run 5).
    aperture: float = 0.0
    # Per-channel gain within +-channel_gain (another illuminant / white balance); ColorJitter's brightness,
    # contrast and saturation never change the hue balance between channels.
    channel_gain: float = 0.0
    rotate_degrees: float = 0.0      # extra arbitrary-angle rotation before the crop (90-degree turns are always on)
    color_jitter: float = 0.2        # brightness/contrast/saturation
    hue: float = 0.0                 # hue jitter: off by default, colour is diagnostic and HSV round trips are slow
    rand_augment: bool = False       # RandAugment(num_ops=2, magnitude below) on top
    rand_augment_magnitude: int = 9
    random_erasing: float = 0.0      # probability of one erased box (after normalisation)
    extra: dict = field(default_factory=dict)


def _interp(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError as err:
        raise ValueError(f"unknown interpolation {name!r}; use bilinear, bicubic or nearest") from err


class ShadesOfGray(torch.nn.Module):
    """Shades-of-Gray colour constancy (Finlayson & Trezzi 2004) on uint8 (..., 3, H, W) images.

    The illuminant of each channel is its Minkowski p-norm mean; each channel is scaled so the
    illuminant becomes grey. p=6 is the value used for dermoscopy (Barata et al. 2015). Works per image
    and returns uint8, so it can sit anywhere before the float conversion, in training and inference.
    """

    def __init__(self, power: float = 6.0) -> None:
        super().__init__()
        self.power = power

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float()
        illuminant = x.pow(self.power).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.power).clamp_min(1.0)
        gain = illuminant.mean(dim=-3, keepdim=True) / illuminant
        return (x * gain).round_().clamp_(0, 255).to(torch.uint8)


FOV_BLACK = 16             # uint8 level below which, in every channel, a pixel is the dermatoscope's black surround
FOV_CORNER = 0.08          # corner patches (share of the short side) that must be mostly black ...
FOV_CORNER_DARK = 0.8      # ... this share of their pixels, in at least two of the four corners
FOV_MAX_DARK = 0.01        # the crop may keep this share of black pixels (a ragged rim)
FOV_MIN_SIDE = 0.25        # a field of view smaller than this share of the short side is not cropped to


def fov_region(img: torch.Tensor) -> tuple[int, int, int, int] | None:
    """uint8 (3, H, W) image -> (left, top, right, bottom) of the largest square around the field of view's
    centre that is (almost) free of black, when the image shows a dermatoscope's black surround; else None.

    The surround is recognised by black corners (at least two of four), so a photo that merely has dark
    areas is left alone; the centre is the centroid of the non-black pixels (an aperture need not be
    centred), and the square's half-side is found by bisection on an integral image of the black mask.
    """
    full_h, full_w = img.shape[-2:]
    # Found on every k-th pixel (short side ~256-511): a 24-megapixel phone photo costs what a thumbnail does.
    k = max(1, min(full_h, full_w) // 256)
    dark = img[..., ::k, ::k].amax(dim=-3) < FOV_BLACK  # (H, W) of the subsampled image
    h, w = dark.shape
    short = min(h, w)
    c = max(1, int(FOV_CORNER * short))
    corners = (dark[:c, :c], dark[:c, -c:], dark[-c:, :c], dark[-c:, -c:])
    if sum(float(patch.float().mean()) >= FOV_CORNER_DARK for patch in corners) < 2:
        return None
    ys, xs = (~dark).nonzero(as_tuple=True)
    if ys.numel() == 0:
        return None
    cy, cx = float(ys.float().mean()), float(xs.float().mean())
    integral = torch.nn.functional.pad(dark.to(torch.int64).cumsum(0).cumsum(1), (1, 0, 1, 0))

    def square(r: int) -> tuple[int, int, int, int]:
        return (max(0, round(cx - r)), max(0, round(cy - r)), min(w, round(cx + r)), min(h, round(cy + r)))

    def dark_share(r: int) -> float:
        x0, y0, x1, y1 = square(r)
        n = int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])
        return n / max(1, (x1 - x0) * (y1 - y0))

    lo, hi = 1, max(h, w)  # dark_share(lo) <= FOV_MAX_DARK < dark_share(hi): the whole image has black corners
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if dark_share(mid) <= FOV_MAX_DARK else (lo, mid)
    x0, y0, x1, y1 = square(lo)
    if min(x1 - x0, y1 - y0) < FOV_MIN_SIDE * short:
        return None
    return x0 * k, y0 * k, min(full_w, x1 * k), min(full_h, y1 * k)


class FovCrop(torch.nn.Module):
    """Crop a uint8 (3, H, W) image to `fov_region` (unchanged when it shows no dermatoscope surround)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        region = fov_region(img)
        if region is None:
            return img
        x0, y0, x1, y1 = region
        return v2.functional.crop(img, y0, x0, y1 - y0, x1 - x0)


def _to_float(pre: Preprocessing) -> list:
    # Colour constancy sits here, after the geometry, so the displayable crop (eval_geometry) keeps the
    # photo's own colours while every path into the model (training, Predictor, evaluation) applies it.
    constancy = [ShadesOfGray()] if pre.color_constancy == "shades_of_gray" else []
    return [*constancy, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]


def resize_size(pre: Preprocessing) -> int:
    """Short side before the centre crop (timm: floor(size / crop_pct))."""
    return int(math.floor(pre.input_size / pre.crop_pct))


def eval_geometry(pre: Preprocessing) -> v2.Compose:
    """Resize + centre crop only: the image 'as the model sees it' (still uint8, displayable)."""
    return v2.Compose([
        v2.ToImage(),
        *([FovCrop()] if pre.fov_crop else []),
        v2.Resize(resize_size(pre), interpolation=_interp(pre.interpolation), antialias=True),
        v2.CenterCrop(pre.input_size),
    ])


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """PIL image or uint8 CHW tensor -> normalised float CHW tensor of `input_size`."""
    return v2.Compose([eval_geometry(pre), *_to_float(pre)])


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees: lesions have no canonical orientation, and unlike an
    arbitrary-angle rotation this loses no pixel, adds no black corners and costs a memory copy."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


class RandomAperture(torch.nn.Module):
    """With probability `p`, black out everything outside a random circle on a uint8 (..., 3, H, W) image:
    diameter `diameter` x the short side, centre moved by up to 5% of it. Before the crop, so crops see a
    rim in a corner, along one side or not at all."""

    def __init__(self, p: float, diameter: tuple[float, float] = (0.85, 1.25)) -> None:
        super().__init__()
        self.p, self.diameter = p, diameter

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        short = min(h, w)
        lo, hi = self.diameter
        radius = short * (lo + (hi - lo) * torch.rand(())) / 2
        cy, cx = (torch.tensor([(h - 1) / 2, (w - 1) / 2]) + (torch.rand(2) - 0.5) * 0.1 * short).tolist()
        yy = torch.arange(h, dtype=torch.float32).sub_(cy).square_()[:, None]
        xx = torch.arange(w, dtype=torch.float32).sub_(cx).square_()[None, :]
        return img * ((yy + xx) <= radius * radius).to(img.dtype)


class RandomChannelGain(torch.nn.Module):
    """Scale each channel of a uint8 (..., 3, H, W) image by its own factor in [1 - g, 1 + g]."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        factors = 1 + (torch.rand(3, 1, 1) * 2 - 1) * self.gain
        return (img.float() * factors).round_().clamp_(0, 255).to(torch.uint8)


def train_transform(pre: Preprocessing, aug: Augmentation) -> v2.Compose:
    # Augmentation runs per sample in DataLoader workers that share 2 CPU cores with the model, so
    # every op here is chosen to be cheap on small uint8 tensors (see `skinlesion bench train`).
    ops: list = [v2.ToImage(), *([FovCrop()] if pre.fov_crop else [])]
    if aug.zoom_out > 0:
        ops.append(v2.RandomZoomOut(fill=0, side_range=(1.0, 1.5), p=aug.zoom_out))
    if aug.aperture > 0:
        ops.append(RandomAperture(aug.aperture))
    if aug.rotate_degrees > 0:
        # Before the crop, so the crop mostly cuts the corners the rotation blackened.
        ops.append(v2.RandomRotation(aug.rotate_degrees, interpolation=InterpolationMode.BILINEAR))
    ops += [
        # Bilinear (not the eval bicubic) keeps the resize cheap; the difference is below augmentation noise.
        v2.RandomResizedCrop(pre.input_size, scale=(aug.scale_min, 1.0), ratio=aug.ratio,
                             interpolation=InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(),
        RandomRot90(),
    ]
    if aug.color_jitter > 0 or aug.hue > 0:
        j = aug.color_jitter
        ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=aug.hue or None))
    if aug.channel_gain > 0:
        ops.append(RandomChannelGain(aug.channel_gain))
    if aug.rand_augment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=aug.rand_augment_magnitude))
    ops.extend(_to_float(pre))
    if aug.random_erasing > 0:
        ops.append(v2.RandomErasing(p=aug.random_erasing, value=0))
    return v2.Compose(ops)
