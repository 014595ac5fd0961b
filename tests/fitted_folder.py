"""A tiny model folder with fitted OOD statistics and a case index, on synthetic HAM10000-like data.

`make_fitted(tmp_path)` writes a 3-class lesion_cnn folder, a synthetic HAM10000 layout (two images per
lesion, `dx_type` alternating) with a lesion-grouped manifest, and runs `skinlesion fit-features`'s
library function on it in-process. Everything is seeded and made here; nothing is read from ../shared/data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.data.transforms import Preprocessing
from skinlesion.models import create_model
from skinlesion.models.folder import save_model_folder
from skinlesion.training import fit_features

LABELS = ["bkl", "mel", "nv"]
TINY_ARGS = {"widths": [8, 16, 16, 32], "hidden": 16}
N_IMAGES = 90          # 45 lesions of 2 images; lesions split 3:1:1 train/val/test


@dataclass
class Fitted:
    folder: Path
    data: Path
    summary: dict
    split_of: dict[str, str]     # image id -> split

    def ids(self, split: str) -> list[str]:
        return [i for i, s in self.split_of.items() if s == split]

    def image(self, image_id: str) -> Path:
        return self.data / "images" / f"{image_id}.jpg"


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("lesion_cnn", len(LABELS), widths=tuple(TINY_ARGS["widths"]), hidden=16).eval()
    return save_model_folder(folder, model, architecture="lesion_cnn", label_names=LABELS,
                             preprocessing=Preprocessing(input_size=64), model_args=TINY_ARGS,
                             extras={"temperature": 1.0, "tta": "flips"})


def write_synthetic_ham(root: Path, n: int = N_IMAGES) -> dict[str, str]:
    """Images, metadata CSV and a lesion-grouped split; returns image id -> split."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, split_of = [], {}
    for i in range(n):
        image_id, lesion = f"ISIC_{i:07d}", i // 2
        synthetic_lesion(i, (80, 60), label=lesion % 3).save(root / "images" / f"{image_id}.jpg", quality=95)
        rows.append(f"HAM_{lesion:07d},{image_id},{LABELS[lesion % 3]},{'histo' if i % 2 else 'follow_up'},"
                    "50.0,male,back")
        split_of[image_id] = ("train", "train", "train", "val", "test")[lesion % 5]
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                                                + "\n".join(rows) + "\n")
    return split_of


def make_fitted(tmp_path: Path, **overrides) -> Fitted:
    folder = write_tiny_model(tmp_path / "model")
    data = tmp_path / "ham"
    split_of = write_synthetic_ham(data)
    (folder / "split_manifest.csv").write_text(
        "image_id,split\n" + "\n".join(f"{i},{s}" for i, s in split_of.items()) + "\n")
    cfg = fit_features.FitFeaturesConfig(**{"model": str(folder), "data": str(data), "workers": 0, "progress": False,
                                            "ood_quantile": 0.05, "index_dims": 8, **overrides})
    return Fitted(folder=folder, data=data, summary=fit_features.run(cfg), split_of=split_of)


def non_lesion_images() -> dict[str, Image.Image]:
    """Things a demo receives that are not dermoscopic images: noise, a flat colour, a checkerboard, text-like stripes."""
    rng = np.random.default_rng(0)
    checker = (np.indices((9, 12)).sum(axis=0) % 2).astype(np.uint8) * 255
    stripes = np.full((90, 120), 255, np.uint8)
    stripes[::6] = 0
    return {
        "colour noise": Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)),
        "flat blue": Image.new("RGB", (120, 90), (30, 60, 200)),
        "checkerboard": Image.fromarray(np.kron(checker, np.ones((10, 10), np.uint8))).convert("RGB"),
        "text-like stripes": Image.fromarray(stripes).convert("RGB"),
    }
