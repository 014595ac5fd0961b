"""Datasets: every layout users bring, one table, leakage-free splits, cached torch datasets.

`dataset` (torch) is imported on first use, so `python -m skinlesion.data describe` and code that
only reads tables do not pay torch's import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .sources import DataError, LesionTable, detect_layout, load_table, verify_images
from .splits import lesion_grouped_split, read_duplicate_pairs, read_manifest, select_split, write_manifest

if TYPE_CHECKING:
    from .dataset import LesionDataset, balanced_sampler, build_cache, class_weights

_LAZY = {"LesionDataset", "balanced_sampler", "build_cache", "class_weights"}

__all__ = [
    "DataError", "LesionDataset", "LesionTable", "balanced_sampler", "build_cache", "class_weights",
    "detect_layout", "lesion_grouped_split", "load_table", "read_duplicate_pairs", "read_manifest",
    "select_split", "verify_images", "write_manifest",
]


def __getattr__(name: str):
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
