"""Small pictures of the similar-cases index's training images, shipped in the model folder.

Without them a Space visitor sees the nearest confirmed cases as a table of image ids, which defeats the
feature. One file, `case_thumbnails.safetensors`: every indexed image as a WebP thumbnail (longer side
`DEFAULT_SIDE` px, its own aspect) concatenated into one uint8 tensor, with an int64 tensor of offsets and
the image ids in the metadata. WebP, because at 128 px it is 2.5x smaller than JPEG at the same look
(measured on 200 HAM10000 + ISIC 2017 images: 0.79 vs 1.60 KB at 96-128 px), so ~10,000 cases fit in
~8 MB. Reading is lazy: opening the file reads the offsets; a picture is one slice of the file.

Thumbnails are data: each source's licence and attribution go in the model card (data/sources + card).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.folder import CASE_THUMBNAILS_FILE, ModelFolderError, save_safetensors_within

FORMAT = "skinlesion-case-thumbnails-1"
DEFAULT_SIDE = 128
DEFAULT_QUALITY = 60
MAX_FILE_BYTES = 15 * 1024 * 1024   # the budget for the whole file


class CaseThumbnailsError(ModelFolderError):
    """The thumbnails file is unreadable, over budget, or does not belong to this case index."""


def thumbnail_bytes(path: str | Path, side: int = DEFAULT_SIDE, quality: int = DEFAULT_QUALITY) -> bytes:
    """One image -> WebP bytes with its longer side at most `side` px (aspect kept)."""
    from ..imageio import load_rgb

    image = load_rgb(path)
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=quality, method=6)
    return buffer.getvalue()


def save_thumbnails(folder: str | Path, image_ids: Sequence[str], paths: Sequence[str | Path], *,
                    manifest_sha256: str, side: int = DEFAULT_SIDE, quality: int = DEFAULT_QUALITY,
                    progress: bool = False) -> Path:
    """Write the thumbnails of `paths` (in `image_ids` order) atomically; refuses to exceed MAX_FILE_BYTES."""
    if len(image_ids) != len(paths):
        raise ValueError(f"{len(image_ids)} image ids but {len(paths)} paths")
    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="case thumbnails", unit="img")
    blobs = [thumbnail_bytes(p, side, quality) for p in iterator]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
    path = Path(folder) / CASE_THUMBNAILS_FILE
    return save_safetensors_within(
        path, {"data": torch.from_numpy(data.copy()), "offsets": torch.from_numpy(offsets)},
        {"format": FORMAT, "image_ids": json.dumps(list(image_ids)), "side": str(side), "encoding": "webp",
         "manifest_sha256": manifest_sha256},
        max_bytes=MAX_FILE_BYTES,
        over_budget=lambda size: CaseThumbnailsError(
            f"{path}: {size / 2**20:.1f} MB is over the {MAX_FILE_BYTES // 2**20} MB budget; use a smaller side "
            f"(now {side}) or quality (now {quality})"))


class CaseThumbnails:
    """Lazy reader: `get(image_id)` decodes one picture; the file stays closed between calls."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                offsets = f.get_tensor("offsets").numpy()
                n_bytes = f.get_slice("data").get_shape()[0]
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file; name it
            raise CaseThumbnailsError(f"{self.path}: not a readable thumbnails file ({err})") from err
        if meta.get("format") != FORMAT:
            raise CaseThumbnailsError(f"{self.path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        ids = json.loads(meta.get("image_ids", "[]"))
        if len(offsets) != len(ids) + 1 or offsets[-1] != n_bytes or np.any(np.diff(offsets) < 0):
            raise CaseThumbnailsError(f"{self.path}: offsets do not fit the {len(ids)} images and {n_bytes} bytes")
        self.manifest_sha256 = meta.get("manifest_sha256", "")
        self._where = {image_id: (int(offsets[i]), int(offsets[i + 1])) for i, image_id in enumerate(ids)}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, image_id: str) -> Image.Image | None:
        where = self._where.get(image_id)
        if where is None:
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            raw = f.get_slice("data")[where[0]:where[1]].numpy().tobytes()
        return Image.open(io.BytesIO(raw)).convert("RGB")


def load_thumbnails(folder: str | Path, image_ids: Sequence[str], manifest_sha256: str) -> CaseThumbnails | None:
    """The folder's thumbnails for a case index, or None when it ships none; refuses another split's."""
    path = Path(folder) / CASE_THUMBNAILS_FILE
    if not path.is_file():
        return None
    thumbs = CaseThumbnails(path)
    if thumbs.manifest_sha256 != manifest_sha256:
        raise CaseThumbnailsError(f"{path}: made for split manifest {thumbs.manifest_sha256[:12]}, the case index "
                                  f"for {manifest_sha256[:12]}; rebuild both with `skinlesion fit-features`")
    missing = sum(1 for i in image_ids if i not in thumbs)
    if missing:
        raise CaseThumbnailsError(f"{path}: no picture for {missing} of the {len(image_ids)} indexed cases; rebuild "
                                  "it with `skinlesion fit-features`")
    return thumbs
