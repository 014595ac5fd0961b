"""From a map in the model-input frame back to the user's photo: geometry and colour overlay.

The model sees a resized, centre-cropped square (`transforms.eval_geometry`), of the dermatoscope's
field of view when the folder crops to it (`transforms.fov_region`). `input_box` inverts that geometry,
so a CAM lands on the pixels it came from; pixels the crops cut away get heat 0 and stay untinted in
the overlay (the model never saw them). The map is resized once, to the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.transforms import Preprocessing, fov_region, resize_size


@dataclass(frozen=True)
class Box:
    """Where the model input's square lies in the original image, in original pixels (may overhang)."""

    left: float
    top: float
    width: float
    height: float


def _resized_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    # torchvision's Resize(int): the short side becomes `short`, the long side int(short * long / short_side).
    w, h = size
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def _crop_offset(resized: int, crop: int) -> int:
    # torchvision's CenterCrop: round((resized - crop) / 2); when padding, the image sits at (crop - resized) // 2.
    if resized >= crop:
        return int(round((resized - crop) / 2.0))
    return -((crop - resized) // 2)


def image_region(image: Image.Image, pre: Preprocessing) -> tuple[int, int, int, int] | None:
    """The field-of-view crop `eval_geometry(pre)` makes of this image (left, top, right, bottom), or None."""
    if not pre.fov_crop:
        return None
    # np.array, not asarray: a PIL buffer is read-only, and torch warns about wrapping a read-only array.
    return fov_region(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))


def input_box(original_size: tuple[int, int], pre: Preprocessing,
              region: tuple[int, int, int, int] | None = None) -> Box:
    """The model-input square of `eval_geometry(pre)` mapped back onto an image of `original_size` (W, H);
    `region`: the field-of-view crop taken first (`image_region`)."""
    x0, y0 = (region[0], region[1]) if region is not None else (0, 0)
    w, h = (region[2] - region[0], region[3] - region[1]) if region is not None else original_size
    rw, rh = _resized_size((w, h), resize_size(pre))
    sx, sy = w / rw, h / rh
    s = pre.input_size
    return Box(left=x0 + _crop_offset(rw, s) * sx, top=y0 + _crop_offset(rh, s) * sy, width=s * sx, height=s * sy)


def heatmap_to_original(heatmap: np.ndarray, original_size: tuple[int, int], pre: Preprocessing,
                        region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(S, S) map in the model-input frame -> (H, W) float32 map on the original image, 0 outside the crop."""
    w, h = original_size
    box = input_box(original_size, pre, region)
    bw, bh = max(1, round(box.width)), max(1, round(box.height))
    left, top = round(box.left), round(box.top)
    scaled = cv2.resize(np.asarray(heatmap, dtype=np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((h, w), dtype=np.float32)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + bw, w), min(top + bh, h)
    out[y0:y1, x0:x1] = scaled[y0 - top:y1 - top, x0 - left:x1 - left]
    np.clip(out, 0.0, 1.0, out=out)  # bilinear resizing can overshoot by a rounding error
    return out


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 RGB with the jet colour map (blue = low, red = high)."""
    heat8 = np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(heat8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, *, alpha: float = 0.5,
                    box: Box | None = None) -> Image.Image:
    """Blend the coloured `heatmap` (same H, W as `image`) over it; only inside `box` when given."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != (image.height, image.width):
        raise ValueError(f"heatmap shape {heatmap.shape} does not match the image ({image.height}, {image.width})")
    if box is None:
        return Image.blend(image.convert("RGB"), Image.fromarray(colorize(heatmap)), alpha)
    x0, y0 = max(round(box.left), 0), max(round(box.top), 0)
    x1, y1 = min(round(box.left + box.width), image.width), min(round(box.top + box.height), image.height)
    out = image.convert("RGB")  # a copy: the caller's image is never modified
    region = out.crop((x0, y0, x1, y1))
    out.paste(Image.blend(region, Image.fromarray(colorize(heatmap[y0:y1, x0:x1])), alpha), (x0, y0))
    return out


def side_by_side(panels: list[Image.Image], titles: list[str], *, height: int = 320) -> Image.Image:
    """Panels scaled to one height, placed left to right, each with its title on a white strip above."""
    from PIL import ImageDraw

    if len(panels) != len(titles):
        raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.BILINEAR)
              for p in panels]
    strip, gap = 22, 6
    canvas = Image.new("RGB", (sum(p.width for p in scaled) + gap * (len(scaled) - 1), height + strip), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, title in zip(scaled, titles, strict=True):
        canvas.paste(panel, (x, strip))
        draw.text((x + 4, 4), title, fill=(0, 0, 0))
        x += panel.width + gap
    return canvas
