"""Shared fixtures: synthetic dermoscopy-like images and a tiny model folder, all made here.

No test reads files the tests did not make, except those marked `realdata`, which use
../shared/data and skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_lesion(seed: int, size: tuple[int, int] = (120, 90), label: int = 0) -> Image.Image:
    """A skin-coloured background with a darker ellipse whose colour depends on `label`."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = w / 2 + rng.uniform(-w / 8, w / 8), h / 2 + rng.uniform(-h / 8, h / 8)
    rx, ry = w * rng.uniform(0.18, 0.3), h * rng.uniform(0.18, 0.3)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    img = np.empty((h, w, 3), dtype=np.float64)
    img[...] = (220, 170, 150)
    palette = [(90, 50, 30), (40, 30, 60), (150, 60, 60), (60, 90, 40), (120, 100, 30), (30, 30, 30), (170, 40, 90)]
    img[inside] = palette[label % len(palette)]
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def lesion_mask(image: Image.Image) -> np.ndarray:
    """Binary mask (True = lesion) of a `synthetic_lesion` image."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    return arr.sum(axis=2) < 400


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # Small test models gain nothing from two intra-op threads, and on a busy 2-core machine two
    # threads thrash (~10x slower than one). One place for every test, not a copy per file.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "HAM10000" / "HAM10000_metadata.csv").exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_model_folder(tmp_path: Path) -> Path:
    """An untrained but complete model folder: lesion_cnn, 3 classes, 64 px, seeded."""
    from skinlesion.data.transforms import Preprocessing
    from skinlesion.models import create_model
    from skinlesion.models.folder import save_model_folder

    torch.manual_seed(0)
    model = create_model("lesion_cnn", 3, widths=(8, 16, 16, 32), hidden=16).eval()
    folder = tmp_path / "tiny_model"
    save_model_folder(folder, model, architecture="lesion_cnn", label_names=["bkl", "mel", "nv"],
                      preprocessing=Preprocessing(input_size=64), model_args={"widths": [8, 16, 16, 32], "hidden": 16},
                      extras={"temperature": 1.0, "tta": "flips"})
    return folder
