"""CAM overlays and predictions for image files (`skinlesion explain`, whose help says what it writes).

`run(ExplainConfig)` decodes every image first (a bad file fails before any model loads), then writes
one overlay per (image, model), or with several models one side-by-side sheet per image, and
`predictions.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imageio import load_rgb
from .overlay import side_by_side
from .predictor import Explanation, Predictor

PREDICTIONS_FILE = "predictions.json"


@dataclass(frozen=True)
class ExplainConfig:
    models: tuple[str, ...]
    images: tuple[Path, ...]
    out: Path
    method: str = "gradcam"
    target: str | None = None       # None: explain each model's predicted label
    tta: str | None = None          # None: each model folder's own TTA mode
    alpha: float = 0.5              # heatmap opacity in the overlay


def model_title(source: str) -> str:
    path = Path(source)
    return path.name if path.is_dir() else source


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique (a/x.jpg and b/x.jpg -> x, x_2) so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return stems


def panel_title(model: str, exp: Explanation) -> str:
    pred = exp.prediction
    return f"{model}: {pred.label} {pred.confidence:.0%} (CAM: {exp.target_label})"


def run(cfg: ExplainConfig) -> list[dict]:
    """Explain every image with every model; write the PNGs and predictions.json into `cfg.out`."""
    if not cfg.models:
        raise ValueError("give at least one model")
    # Decode once up front: a bad file fails before any model is loaded or anything is written.
    originals = [load_rgb(path) for path in cfg.images]
    predictors = {source: Predictor.from_pretrained(source, tta=cfg.tta) for source in cfg.models}
    cfg.out.mkdir(parents=True, exist_ok=True)
    compare = len(cfg.models) > 1
    entries = []
    for path, stem, original in zip(cfg.images, unique_stems(cfg.images), originals, strict=True):
        panels: list[Image.Image] = [original]
        titles = ["input"]
        for source, predictor in predictors.items():
            exp = predictor.explain(original, method=cfg.method, target=cfg.target, alpha=cfg.alpha)
            entry = {"image": str(path), "model": source, "method": exp.method, "target_label": exp.target_label,
                     "prediction": exp.prediction.to_dict()}
            if compare:
                panels.append(exp.overlay)
                titles.append(panel_title(model_title(source), exp))
            else:
                overlay_path = cfg.out / f"{stem}_{exp.method}.png"
                exp.overlay.save(overlay_path)
                entry["overlay"] = str(overlay_path)
            entries.append(entry)
        if compare:
            compare_path = cfg.out / f"{stem}_compare_{cfg.method.lower()}.png"
            side_by_side(panels, titles).save(compare_path)
            for entry in entries[-len(predictors):]:
                entry["comparison"] = str(compare_path)
    (cfg.out / PREDICTIONS_FILE).write_text(json.dumps(entries, indent=2) + "\n")
    return entries
