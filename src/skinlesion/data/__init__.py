"""Data: every layout users bring, one table, leakage-free splits, transforms, cached torch datasets.

- `table`: the one `LesionTable` every layout is read into, and `DataError`;
- `layouts`: HAM10000, ISIC 2017/2018/2019, PH2 and image folders, and Hugging Face datasets (`hf`);
- `splits`: lesion-grouped stratified splits and the split manifest;
- `transforms`: preprocessing (what a model folder records) and augmentation;
- `dataset`: the decoded-once uint8 cache and the torch dataset over a table.

Names are imported on first use, so `skinlesion data describe` does not pay torch's import time and
`skinlesion.data.transforms` (which the Predictor uses) does not pay pandas'.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import LesionDataset, balanced_sampler, build_cache, class_counts, class_weights
    from .layouts import detect_layout, load_table, verify_images
    from .splits import (
        lesion_grouped_split,
        read_duplicate_pairs,
        read_manifest,
        select_split,
        write_manifest,
    )
    from .table import DataError, LesionTable

_LAZY = {
    "DataError": "table", "LesionTable": "table", "detect_layout": "layouts", "load_table": "layouts",
    "verify_images": "layouts",
    "lesion_grouped_split": "splits", "read_duplicate_pairs": "splits", "read_manifest": "splits",
    "select_split": "splits", "write_manifest": "splits",
    "LesionDataset": "dataset", "balanced_sampler": "dataset", "build_cache": "dataset", "class_weights": "dataset",
    "class_counts": "dataset",
}

__all__ = [
    "DataError", "LesionDataset", "LesionTable", "balanced_sampler", "build_cache", "class_counts", "class_weights",
    "detect_layout", "lesion_grouped_split", "load_table", "read_duplicate_pairs", "read_manifest",
    "select_split", "verify_images", "write_manifest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
