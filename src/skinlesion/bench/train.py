"""Training throughput: the real loop against the bare step, in one process, one run.

    skinlesion bench train --model resnet18 --image-size 128 [--batch-size 64] [--steps 20] [--data PATH]

Both numbers come from the code `train()` runs: `prepare_split` + `build_datasets` (decode cache) +
`make_loader` + `build_step_state` + `train_step`. "loop" iterates the prepared DataLoader (workers,
augmentation, collation) and steps; "bare" repeats `train_step` on one batch already in memory
(same model, size, batch). Their ratio says how much of the step time the input pipeline costs
(1.0 = none); `cpu_ratio` says the same from CPU time (workers included), which a shared machine's
load disturbs far less than wall time. Without --data, synthetic dermoscopy-like JPEGs of the size
the cache keeps are written to a temporary folder. Prints JSON.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..constants import CACHE_SHORT_SIDE
from ..training.config import TrainConfig
from ..training.loop import build_datasets, build_step_state, make_loader, train_step
from ..training.setup import make_accelerator, prepare_split, preprocessing_of

SYNTHETIC_CLASSES = ("bkl", "mel", "nv")


def write_synthetic_imagefolder(root: Path, n_images: int, short_side: int, seed: int = 0) -> Path:
    """`n_images` 4:3 JPEGs (skin background, darker ellipse whose colour depends on the class)."""
    rng = np.random.default_rng(seed)
    h, w = short_side, round(short_side * 4 / 3)
    yy, xx = np.mgrid[0:h, 0:w]
    colours = np.array([(90, 50, 30), (40, 30, 60), (150, 60, 60)], dtype=np.float32)
    for i in range(n_images):
        label = i % len(SYNTHETIC_CLASSES)
        cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
        rx, ry = w * rng.uniform(0.15, 0.3), h * rng.uniform(0.15, 0.3)
        img = np.empty((h, w, 3), dtype=np.float32)
        img[...] = (220, 170, 150)
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = colours[label]
        img += rng.normal(0, 8, img.shape).astype(np.float32)
        folder = root / SYNTHETIC_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=90)
    return root


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (the DataLoader workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def _time_steps(step, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds incl. workers) for `steps` calls of `step()`."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0, _cpu_seconds() - c0


def run(model: str, image_size: int, *, batch_size: int = 64, steps: int = 20, warmup: int = 3,
        data: str | None = None, workers: int | None = None, channels_last: bool | None = None,
        n_images: int = 512, seed: int = 0) -> dict:
    """Images/s of the real training loop and of the bare step, and their ratio (loop / bare).

    Bare first: the DataLoader workers fill their prefetch queue during its warm-up and then idle, so
    they do not slow it. The loop's warm-up then drains that queue (2 batches per worker), so the
    timed loop steps run at the pipeline's steady state and are not flattered by batches made earlier.
    Bare is timed again after the loop and the two are averaged, which cancels a steady drift in a
    shared machine's load (the JSON keeps both).
    """
    overrides = {} if workers is None else {"workers": workers}
    if channels_last is not None:
        overrides["channels_last"] = channels_last
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if data is None:
            short_side = min(CACHE_SHORT_SIDE, math.ceil(image_size / TrainConfig.crop_pct * 1.25))
            data = str(write_synthetic_imagefolder(Path(tmp) / "data", n_images, short_side, seed=seed))
        # epochs only shapes the LR schedule here; early stopping, checkpoints and the Hub play no part.
        cfg = TrainConfig(data=data, model=model, image_size=image_size, batch_size=batch_size, epochs=100,
                          output_dir=str(Path(tmp) / "out"), val_fraction=0.05, test_fraction=0.0, progress=False,
                          seed=seed, **overrides)
        accelerator = make_accelerator(cfg)
        torch.manual_seed(cfg.seed)
        split = prepare_split(cfg, is_main=accelerator.is_main_process)
        train_ds, val_ds = build_datasets(cfg, split, preprocessing_of(cfg), progress=False)
        generator = torch.Generator().manual_seed(cfg.seed)
        state, train_loader, _, batches_per_epoch = build_step_state(
            cfg, split.classes, train_ds.targets, accelerator,
            make_loader(train_ds, cfg, train=True, generator=generator),
            make_loader(val_ds, cfg, train=False, generator=None))
        state.model.train()

        def batches():
            epoch = 0
            while True:  # as train(): one pass per epoch, sampler re-seeded per epoch
                generator.manual_seed(cfg.seed * 1000 + epoch)
                yield from train_loader
                epoch += 1

        stream = batches()

        def loop_step() -> None:
            x, y = next(stream)
            train_step(state, x, y).item()  # train() reads the loss every step too

        x0, y0 = next(stream)

        def bare_step() -> None:
            train_step(state, x0, y0).item()

        _time_steps(bare_step, warmup)
        bare_before = _time_steps(bare_step, steps)
        _time_steps(loop_step, warmup + 2 * cfg.workers)
        loop_s, loop_cpu = _time_steps(loop_step, steps)
        bare_after = _time_steps(bare_step, steps)  # bare on both sides of the loop cancels a steady drift in load
        stream.close()
    images = steps * batch_size
    bare_s, bare_cpu = (bare_before[0] + bare_after[0]) / 2, (bare_before[1] + bare_after[1]) / 2
    loop_ips, bare_ips = images / loop_s, images / bare_s
    return {"model": model, "image_size": image_size, "batch_size": batch_size, "steps": steps,
            "workers": cfg.workers, "channels_last": cfg.channels_last, "ema": cfg.ema,
            "torch_threads": torch.get_num_threads(), "batches_per_epoch": batches_per_epoch,
            "data": "synthetic" if data.startswith(tmp) else data,
            "loop_images_per_s": round(loop_ips, 1), "bare_step_images_per_s": round(bare_ips, 1),
            "bare_before_after_images_per_s": [round(images / bare_before[0], 1), round(images / bare_after[0], 1)],
            "ratio": round(loop_ips / bare_ips, 3),
            # On a shared machine wall time swings with others' load; CPU time (workers included) much less:
            # cpu_ratio = bare CPU / loop CPU is the share of the loop's CPU spent in the step itself.
            "loop_images_per_cpu_s": round(images / loop_cpu, 2), "bare_images_per_cpu_s": round(images / bare_cpu, 2),
            "cpu_ratio": round(bare_cpu / loop_cpu, 3)}
