"""Turning whatever a user hands us (a path, bytes, PIL image, numpy array) into an RGB PIL image.

All decoding goes through `load_rgb` so the training cache, evaluation, the Predictor and the app
treat odd files the same way: EXIF rotation applied; grayscale, palette, RGBA, CMYK and 16-bit become
8-bit RGB; truncated or non-image files and decompression bombs raise `ImageLoadError` naming the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .constants import MAX_IMAGE_PIXELS

# Truncated files must fail loudly, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An input could not be turned into an RGB image; the message names the input and the reason."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(root: Path) -> list[Path]:
    """Every image file under `root` (recursively), sorted; FileNotFoundError when it is not a folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of images")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageLoadError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {w}x{h} = {w * h / 1e6:.0f} megapixels, above the {max_pixels / 1e6:.0f} MP limit "
            "(refused to protect memory; downscale it first)"
        )


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"{name}: array of shape {arr.shape} is not an HxW, HxWx3 or HxWx4 image")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        # Float images are taken as [0, 1] (the convention of skimage and torchvision).
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    else:
        raise ImageLoadError(f"{name}: unsupported array dtype {arr.dtype}")
    return Image.fromarray(arr)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's convert('L') clips 16-bit values at 255 (a white image); rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = (np.clip(arr / top, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels have arbitrary colour underneath: composite on white like a viewer does.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, LAB


def load_rgb(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, draft_short_side: int | None = None) -> Image.Image:
    """Decode `source` into an 8-bit RGB PIL image with EXIF orientation applied.

    `draft_short_side` lets JPEG decoding downscale by 2/4/8 inside libjpeg (much faster and
    lighter for big photos) while keeping at least that many pixels on the short side.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        _check_pixels((source.shape[1], source.shape[0]) if source.ndim >= 2 else (0, 0), name, max_pixels)
        return _to_rgb(_array_to_pil(source, name))
    if isinstance(source, Image.Image):
        _check_pixels(source.size, name, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, bytes):
        fp: Any = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{name}: file not found")
        if path.is_dir():
            raise ImageLoadError(f"{name}: is a folder, not an image file")
        fp = path
    else:
        raise ImageLoadError(f"{name}: expected a path, bytes, PIL image or numpy array")
    try:
        # Image.open only reads the header, so the size check below runs before any pixel is decoded.
        with Image.open(fp) as img:
            _check_pixels(img.size, name, max_pixels)
            if draft_short_side and img.format == "JPEG":
                w, h = img.size
                scale = min(w, h) / draft_short_side
                if scale >= 2:
                    img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: not an image file (or a format Pillow cannot read)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from err
