"""Acquisition shifts simulated from the validation split: the same lesions as another clinic's dermatoscope,
camera and software would deliver them. Used to check, on validation data only, that what a model and its
not-a-dermoscopic-image check learned is about the lesion rather than about how HAM10000 was photographed
(`scripts/measure_ood.py`, `scripts/shift_robustness.py`).

Each shift maps (image path, index) -> PIL image; randomness is drawn per image from the index, so a run is
exactly rerunnable.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def camera_shift(path: str, seed: int = 0) -> Image.Image:
    """Another camera and pipeline: squashed to a 256 x 256 square (as ISIC releases are), unsharp-masked,
    JPEG quality 70. Deterministic (`seed` unused)."""
    image = Image.open(path).convert("RGB").resize((256, 256), Image.BICUBIC)
    image = image.filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def colour_shift(path: str, seed: int) -> Image.Image:
    """Another illuminant and exposure: per-channel gains within +-15% (white balance) and a gamma within
    +-20% (exposure/tone curve), drawn per image from `seed`."""
    rng = np.random.default_rng(seed)
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = x ** np.exp(rng.uniform(-0.2, 0.2)) * np.exp(rng.uniform(-0.15, 0.15, size=3))
    return Image.fromarray((x.clip(0, 1) * 255).round().astype(np.uint8))


def aperture_shift(path: str, seed: int) -> Image.Image:
    """An uncropped contact dermatoscope: a centred circular field of view (diameter 0.9-1.1 x the short
    side, drawn per image from `seed`) with black outside."""
    rng = np.random.default_rng(seed)
    image = Image.open(path).convert("RGB")
    w, h = image.size
    radius = min(w, h) * rng.uniform(0.45, 0.55)
    yy, xx = np.ogrid[:h, :w]
    inside = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= radius ** 2
    return Image.fromarray(np.where(inside[..., None], np.asarray(image), 0).astype(np.uint8))


def downscale(path: str, factor: float) -> Image.Image:
    """The same photo at a lower resolution: both sides times `factor` (bicubic, antialiased). Not a
    clinic shift (not in `SHIFTS`): `scripts/shift_robustness.py --downscale` uses it to measure how much a
    model's figures depend on source resolution."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)


SHIFTS: dict[str, Callable[[str, int], Image.Image]] = {
    "camera_shift": camera_shift, "colour_shift": colour_shift, "aperture_shift": aperture_shift}
