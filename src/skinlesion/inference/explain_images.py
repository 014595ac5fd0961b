"""`python -m skinlesion.explain --model M --image A.jpg [B.jpg ...] --out DIR`: CAM overlays + predictions.

With one model, each image gets `<stem>_<method>.png` (the overlay at the image's resolution).
With `--models M1 M2 ...`, each image gets `<stem>_compare_<method>.png`: the original and every
model's overlay side by side, each titled with the model and its prediction. Either way
`predictions.json` lists one entry per (image, model) with the prediction and the files written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imageio import ImageLoadError, load_rgb
from .overlay import side_by_side
from .predictor import Explanation, Predictor
from .tta import TTA_MODES

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


def build_parser() -> argparse.ArgumentParser:
    from .cam import CAM_METHODS

    parser = argparse.ArgumentParser(prog="python -m skinlesion.explain", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model folder or Hub id")
    which.add_argument("--models", nargs="+", help="several models: one side-by-side comparison per image")
    parser.add_argument("--image", nargs="+", required=True, type=Path, help="image file(s)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--method", default="gradcam", choices=sorted(CAM_METHODS))
    parser.add_argument("--target", default=None, help="label to explain (default: the predicted one)")
    parser.add_argument("--tta", choices=sorted(TTA_MODES), default=None, help="default: each model folder's mode")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ExplainConfig(models=tuple(args.models or [args.model]), images=tuple(args.image), out=args.out,
                        method=args.method, target=args.target, tta=args.tta, alpha=args.alpha)
    try:
        entries = run(cfg)
    except ImageLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for entry in entries:
        pred = entry["prediction"]
        print(f"{entry['image']}  [{model_title(entry['model'])}]  {pred['label']} {pred['confidence']:.3f}"
              f"{'  (uncertain)' if pred['uncertain'] else ''}")
    print(f"wrote {cfg.out / PREDICTIONS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
