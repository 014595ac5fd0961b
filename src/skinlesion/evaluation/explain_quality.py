"""How good are the saliency maps? Faithfulness (deletion/insertion) and localisation (lesion masks).

- Deletion / insertion (Petsiuk et al., RISE 2018): pixels are removed from the image, most salient
  first, and the explained class's probability is tracked; a faithful map makes it fall fast (low
  deletion AUC). Insertion starts from a blurred copy and restores the most salient pixels first; a
  faithful map makes the probability rise fast (high insertion AUC). Removed pixels take the value of
  the blurred copy rather than black, which keeps perturbed images closer to what the model saw in
  training. pytorch-grad-cam's ROAD metrics call `model(...)` directly and solve a sparse system per
  image and threshold; ours score every step in one batched `Predictor.forward_views` call, so
  logits come from the one place that computes them.
- Localisation, with ground-truth lesion masks: the share of saliency inside the mask and the
  pointing game (is the map's maximum inside the lesion?).

Every map is computed by `cam.compute_cam` in the frame of the model input; masks are carried into
that frame by the same `transforms.eval_geometry` the model's input went through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..data.layouts import MASK_SUFFIXES
from ..data.table import LesionTable
from ..data.transforms import eval_geometry, eval_transform
from ..imageio import is_image_file, load_rgb
from ..inference import calibration, cam, tta

Tensor = torch.Tensor
DEFAULT_STEPS = 16  # perturbation steps per curve: 17 images per curve, scored in one batch


class MaskError(ValueError):
    """A mask folder or mask file cannot be used (missing, unreadable, or matches no image)."""


# ---------------------------------------------------------------------------------------------
# Pure metrics on one map
# ---------------------------------------------------------------------------------------------

def energy_inside(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of total saliency inside `mask` (sum(s * m) / sum(s)); None for an all-zero map."""
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    total = s.sum()
    if total <= 0:
        return None
    return float(s[np.asarray(mask, dtype=bool)].sum() / total)


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> bool | None:
    """Pointing game: is the map's maximum inside the mask? None for a constant map (no maximum).

    With several maximal pixels, the first in row-major order counts (no tolerance radius).
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.max() == s.min():
        return None
    return bool(np.asarray(mask, dtype=bool).flat[int(np.argmax(s))])


def perturbation_batch(x: Tensor, baseline: Tensor, saliency: Tensor, *, mode: str,
                       steps: int = DEFAULT_STEPS) -> Tensor:
    """(3, H, W) image + (3, H, W) baseline + (H, W) map -> (steps + 1, 3, H, W) perturbed images.

    Step k has the k/steps most salient pixels deleted (replaced by the baseline) or inserted
    (copied from the image onto the baseline). Ties in the map are broken by pixel index.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    h, w = saliency.shape
    order = torch.argsort(saliency.flatten(), descending=True, stable=True)  # most salient first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long()        # pixels switched per step
    switched = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, h, w)  # (S+1, 1, H, W)
    if mode == "deletion":
        return torch.where(switched, baseline[None], x[None])
    return torch.where(switched, x[None], baseline[None])


def curve_auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule)."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(curve, dx=1.0 / (curve.size - 1)))


def blurred_baseline(x: Tensor) -> Tensor:
    """(3, H, W) -> a heavily blurred copy (sigma = an eighth of the side): colours kept, detail gone."""
    side = min(x.shape[-2:])
    sigma = max(side / 8.0, 1.0)
    kernel = int(2 * round(2 * sigma) + 1)
    kernel = min(kernel, 2 * ((side - 1) // 2) + 1)  # an odd size no larger than the image
    return TF.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def deletion_insertion(score: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor,
                       steps: int = DEFAULT_STEPS) -> dict[str, float]:
    """Deletion and insertion AUCs for one image; `score` maps (N, 3, H, W) -> (N,) class probability."""
    baseline = blurred_baseline(x)
    deletion = perturbation_batch(x, baseline, saliency, mode="deletion", steps=steps)
    insertion = perturbation_batch(x, baseline, saliency, mode="insertion", steps=steps)
    scores = score(torch.cat([deletion, insertion])).detach().cpu().numpy()  # (2 * (S+1),)
    del_curve, ins_curve = scores[: steps + 1], scores[steps + 1:]
    return {"deletion_auc": curve_auc(del_curve), "insertion_auc": curve_auc(ins_curve)}


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

def index_masks(folder: str | Path) -> dict[str, Path]:
    """Every image file under `folder`, keyed by file stem."""
    root = Path(folder)
    if not root.is_dir():
        raise MaskError(f"{root}: mask folder not found")
    found = {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and is_image_file(p)}
    if not found:
        raise MaskError(f"{root}: no mask images found")
    return found


def find_mask(image_path: str | Path, masks: dict[str, Path]) -> Path | None:
    """The mask for an image: its stem plus a known mask suffix (`_lesion`, `_segmentation`, ...), else
    the same stem (a mask folder of its own), else its stem plus any '_suffix'.

    Known suffixes come first because a PH2 case folder also holds `IMD002_R1_Region.bmp` (a colour
    region, not the lesion) and the image `IMD002.bmp` itself, which is never its own mask.
    """
    image_path = Path(image_path)
    stem = image_path.stem
    for suffix in MASK_SUFFIXES:
        if stem + suffix in masks:
            return masks[stem + suffix]
    if stem in masks and masks[stem].resolve() != image_path.resolve():
        return masks[stem]
    matches = sorted(s for s in masks if s.startswith(stem + "_"))
    return masks[matches[0]] if matches else None


def load_mask(path: str | Path) -> np.ndarray:
    """A binary mask image -> bool (H, W), white (> 127) = lesion."""
    grey = np.asarray(load_rgb(path).convert("L"))
    mask = grey > 127
    if not mask.any():
        raise MaskError(f"{path}: mask has no lesion pixels (white = lesion)")
    return mask


def mask_in_model_frame(mask: np.ndarray, geometry: Callable) -> np.ndarray:
    """Carry an original-resolution mask through the model's resize + crop; (H, W) bool -> (S, S) bool."""
    as_image = torch.from_numpy(mask.astype(np.float32))[None]  # (1, H, W)
    return (geometry(as_image)[0] >= 0.5).numpy()


# ---------------------------------------------------------------------------------------------
# Running the methods on a predictor
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QualityConfig:
    methods: tuple[str, ...] = ("gradcam",)
    n_images: int = 8               # images explained per method
    cam_tta: str = "none"           # TTA views averaged inside each map (the app's smoothing)
    steps: int = DEFAULT_STEPS      # deletion / insertion curve resolution
    masks: str | None = None        # folder of lesion masks matched by file stem
    seed: int = 0                   # which images are picked


def choose_images(table: LesionTable, n: int, seed: int, masks: dict[str, Path] | None) -> list[int]:
    """Seeded choice of `n` rows; with masks, only rows that have one."""
    rows = np.arange(len(table.frame))
    if masks is not None:
        rows = np.array([i for i in rows if find_mask(table.frame["path"].iloc[i], masks) is not None], dtype=int)
        if rows.size == 0:
            raise MaskError("no evaluated image has a mask (masks are matched by file stem, e.g. "
                            "ISIC_0000000.jpg <- ISIC_0000000_segmentation.png)")
    rng = np.random.default_rng(seed)
    return sorted(rng.permutation(rows)[:n].tolist())


def rank_methods(rows: list[dict]) -> list[dict]:
    """Order methods by their mean rank over the available criteria (1 = best) and add `rank`.

    Criteria: insertion AUC (higher better), deletion AUC (lower better) and, with masks, the
    energy share and pointing accuracy (higher better).
    """
    criteria = {"insertion_auc": -1, "deletion_auc": 1, "energy_inside_mask": -1, "pointing_accuracy": -1}
    mean_ranks = np.zeros(len(rows))
    used = 0
    for key, sign in criteria.items():
        values = [r.get(key) for r in rows]
        if any(v is None for v in values):
            continue
        # rank 1 = best; equal values share the better rank
        keyed = np.array([sign * v for v in values], dtype=np.float64)
        mean_ranks += np.array([1 + (keyed < k).sum() for k in keyed], dtype=np.float64)
        used += 1
    ordered = sorted(zip(mean_ranks / max(used, 1), range(len(rows)), rows, strict=True), key=lambda t: (t[0], t[1]))
    return [{**row, "mean_rank": float(mr), "rank": i + 1} for i, (mr, _, row) in enumerate(ordered)]


def evaluate_explanations(predictor, table: LesionTable, cfg: QualityConfig, temperature: float) -> dict:
    """Explain `cfg.n_images` images with each method and score the maps; returns the ranked table.

    The explained class is the model's prediction (what the app explains), computed with the same
    `forward_views` as everything else; the perturbation scores use the identity view.
    """
    masks = index_masks(cfg.masks) if cfg.masks else None
    chosen = choose_images(table, cfg.n_images, cfg.seed, masks)
    pre = predictor.preprocessing
    to_input, geometry = eval_transform(pre), eval_geometry(pre)
    model = predictor.loaded.model
    device = next(model.parameters()).device
    views = tta.get_views(cfg.cam_tta)

    def class_probability(target: int) -> Callable[[Tensor], Tensor]:
        def score(batch: Tensor) -> Tensor:
            with torch.inference_mode():
                logits = predictor.forward_views(batch.to(device), "none")  # (1, N, K)
            return calibration.calibrated_probs(logits, temperature)[:, target]
        return score

    per_image: list[dict] = []
    resized_masks = 0
    for row in chosen:
        path = table.frame["path"].iloc[row]
        image = load_rgb(path)
        x = to_input(image)                                                    # (3, S, S) normalised
        with torch.inference_mode():
            logits = predictor.forward_views(x[None].to(device), cfg.cam_tta)  # (V, 1, K)
        target = int(calibration.calibrated_probs(logits, temperature)[0].argmax())
        mask = None
        if masks is not None:
            original = load_mask(find_mask(path, masks))
            if original.shape != (image.height, image.width):
                # Masks made for the full-size originals of a resized copy (ISIC at 256x256): the copy
                # was resized as a whole, so resizing the mask the same way keeps them aligned.
                original = np.asarray(Image.fromarray(original).resize(image.size, Image.Resampling.NEAREST))
                resized_masks += 1
            mask = mask_in_model_frame(original, geometry)
        for method in cfg.methods:
            start = time.perf_counter()
            saliency = cam.compute_cam(model, x[None], target, method=method, views=views)[0].cpu()  # (S, S)
            seconds = time.perf_counter() - start
            record = {"image": Path(path).name, "method": method, "target": predictor.label_names[target],
                      "cam_seconds": seconds,
                      **deletion_insertion(class_probability(target), x, saliency, steps=cfg.steps)}
            if mask is not None:
                record["energy_inside_mask"] = energy_inside(saliency.numpy(), mask)
                record["pointing_hit"] = pointing_hit(saliency.numpy(), mask)
            per_image.append(record)
    return {"methods": rank_methods(summarise(per_image, cfg.methods, with_masks=masks is not None)),
            "per_image": per_image, "n_images": len(chosen), "cam_tta": cfg.cam_tta, "steps": cfg.steps,
            "masks": cfg.masks, "masks_resized_to_image": resized_masks, "explained_class": "prediction"}


def summarise(per_image: list[dict], methods: Sequence[str], *, with_masks: bool) -> list[dict]:
    """Mean of each score per method (None-valued entries, e.g. constant maps, are left out)."""
    rows = []
    for method in methods:
        recs = [r for r in per_image if r["method"] == method]

        def mean(key: str, recs=recs) -> float | None:
            vals = [float(r[key]) for r in recs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        row = {"method": method, "n_images": len(recs), "deletion_auc": mean("deletion_auc"),
               "insertion_auc": mean("insertion_auc"), "cam_seconds": mean("cam_seconds")}
        if row["deletion_auc"] is not None and row["insertion_auc"] is not None:
            row["insertion_minus_deletion"] = row["insertion_auc"] - row["deletion_auc"]
        if with_masks:
            row["energy_inside_mask"] = mean("energy_inside_mask")
            row["pointing_accuracy"] = mean("pointing_hit")
        rows.append(row)
    return rows
