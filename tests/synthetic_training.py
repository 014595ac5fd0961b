"""Tiny synthetic image-folder datasets and configs for the training tests (and `ddp_check.py`).

Each class is a lesion colour (see `conftest.synthetic_lesion`), so a few dozen 40x30 images are
learnable in a handful of steps; everything is seeded and written into the test's tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import synthetic_lesion

from skinlesion.training.config import TrainConfig

TINY_CNN = {"widths": [8, 16, 16, 32], "hidden": 16}


def make_imagefolder(root: Path, classes: tuple[str, ...] = ("bkl", "mel", "nv"), per_class: int = 16,
                     size: tuple[int, int] = (40, 30)) -> Path:
    """`root/<class>/<class>_<i>.png`, `per_class` images per class; class i gets lesion colour i."""
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic_lesion(seed=1000 * label + i, size=size, label=label).save(folder / f"{name}_{i:03d}.png")
    return root


def tiny_config(data: Path, output_dir: Path, **overrides) -> TrainConfig:
    """A lesion_cnn run on 32 px inputs that takes a few seconds on one CPU core."""
    values = dict(data=str(data), output_dir=str(output_dir), model="lesion_cnn", model_args=dict(TINY_CNN),
                  image_size=32, batch_size=8, epochs=2, lr=3e-3, warmup_epochs=0.5, val_fraction=0.25,
                  test_fraction=0.0, workers=0, progress=False, checkpoint_minutes=0.0, early_stopping=0,
                  ema=False, tta="flips", seed=0)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def write_recipe(cfg: TrainConfig, path: Path) -> Path:
    """`cfg` as a --config JSON recipe (for train.py subprocess runs); data and output_dir stay on the CLI."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("data", "output_dir")}
    path.write_text(json.dumps(values))
    return path
