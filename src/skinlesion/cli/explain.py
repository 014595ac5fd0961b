"""`skinlesion explain`: CAM overlays and predictions for images, with one model or several side by side.

With one model, each image gets `<stem>_<method>.png` (the overlay at the image's resolution). With
--models M1 M2 ..., each image gets `<stem>_compare_<method>.png`: the original and every model's
overlay side by side, each titled with the model and its prediction. Either way `predictions.json`
lists one entry per (image, model) with the prediction and the files written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..imageio import ImageLoadError
from ..inference import explain_images
from ..inference.tta import TTA_MODES
from .common import command_parser


def build_parser(prog: str) -> argparse.ArgumentParser:
    from ..inference.cam import CAM_METHODS  # pytorch-grad-cam: seconds to import, so only for this command

    parser = command_parser(prog, __doc__.split("\n", 2)[2], [
        f"{prog} --model weights --image a.jpg b.jpg --method gradcam --tta flips --out cams/",
        f"{prog} --models weights runs/other --image a.jpg --out compare/"])
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


def run(args: argparse.Namespace) -> int:
    cfg = explain_images.ExplainConfig(models=tuple(args.models or [args.model]), images=tuple(args.image),
                                       out=args.out, method=args.method, target=args.target, tta=args.tta,
                                       alpha=args.alpha)
    try:
        entries = explain_images.run(cfg)
    except ImageLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for entry in entries:
        pred = entry["prediction"]
        print(f"{entry['image']}  [{explain_images.model_title(entry['model'])}]  {pred['label']} "
              f"{pred['confidence']:.3f}{'  (uncertain)' if pred['uncertain'] else ''}")
    print(f"wrote {cfg.out / explain_images.PREDICTIONS_FILE}")
    return 0
