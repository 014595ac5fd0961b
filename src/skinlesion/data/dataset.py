"""Torch datasets over a `LesionTable`, with a decode-once cache and the imbalance helpers.

Training on CPU must be compute-bound: JPEG decoding and resizing each image every epoch would cost
as much as a small model's step, so every image is decoded once (threads: PIL releases the GIL),
downscaled so its short side is at most `short_side`, and kept as a uint8 CHW tensor. DataLoader
workers fork after the cache is built and share those pages copy-on-write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from ..constants import CACHE_SHORT_SIDE
from ..imageio import ImageLoadError, load_rgb
from .table import DataError, LesionTable


def decode_for_cache(path: str, short_side: int) -> torch.Tensor:
    img = load_rgb(path, draft_short_side=short_side)
    w, h = img.size
    if min(w, h) > short_side:
        scale = short_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()  # HWC -> CHW uint8


def build_cache(paths: Sequence[str], short_side: int = CACHE_SHORT_SIDE, threads: int = 4,
                progress: bool = False) -> list[torch.Tensor]:
    """Decode every path once; any unreadable file raises `ImageLoadError` naming it."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        it = pool.map(lambda p: decode_for_cache(p, short_side), paths)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(paths), desc="decoding images", unit="img")
        return list(it)


class LesionDataset(Dataset):
    """(image tensor, class index) pairs; `images` is a prebuilt cache or None to decode lazily."""

    def __init__(self, table: LesionTable, classes: Sequence[str], transform: Callable,
                 images: list[torch.Tensor] | None = None, short_side: int = CACHE_SHORT_SIDE):
        unknown = sorted(set(table.frame["label"]) - set(classes))
        if unknown:
            raise DataError(f"{table.root}: label(s) {unknown} are not among the model's classes {list(classes)}")
        self.paths = table.frame["path"].tolist()
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.targets = [self.class_to_idx[c] for c in table.frame["label"]]
        self.transform = transform
        self.images = images
        self.short_side = short_side
        if images is not None and len(images) != len(self.paths):
            raise ValueError("cache length does not match the table")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            img = self.images[index]
        else:
            try:
                img = decode_for_cache(self.paths[index], self.short_side)
            except ImageLoadError as err:
                raise DataError(str(err)) from err
        return self.transform(img), self.targets[index]


def class_counts(targets: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (sklearn's 'balanced'); absent classes get 0."""
    counts = class_counts(targets, num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


def balanced_sampler(targets: Sequence[int], num_classes: int, generator: torch.Generator | None = None,
                     power: float = 1.0) -> WeightedRandomSampler:
    """Sample each class about equally often (power=1) or part-way there (0 < power < 1)."""
    counts = class_counts(targets, num_classes).astype(np.float64)
    per_sample = (1.0 / np.maximum(counts, 1)) ** power
    weights = torch.as_tensor(per_sample[np.asarray(targets)], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(targets), replacement=True, generator=generator)
