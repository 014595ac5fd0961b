"""`skinlesion predict`: predict a folder of images into a CSV.

Images are found recursively and predicted in batches with the model folder's calibration, TTA,
out-of-distribution check and similar cases: one row per image (label, calibrated probabilities,
malignancy, TTA agreement, OOD score and flag, nearest cases). An unreadable file stops the run with its
name, unless --skip-bad: then its row has the reason in the `error` column.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..imageio import ImageLoadError
from ..inference import predict_folder
from ..inference.streaming import DEFAULT_WORKERS
from ..inference.tta import TTA_MODES
from ..inference.variants import AUTO, VARIANTS
from .common import command_parser


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = command_parser(prog, __doc__.split("\n", 2)[2], [
        f"{prog} --model weights --images DIR --out predictions.csv",
        f"{prog} --model OWNER/MODEL --revision v1 --images DIR --out predictions.csv --skip-bad --tta full"])
    parser.add_argument("--model", required=True, help="model folder or Hub id (owner/name)")
    parser.add_argument("--revision", default=None, help="Hub revision (commit, tag or branch) to pin")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    parser.add_argument("--tta", choices=sorted(TTA_MODES), default=None, help="default: the model folder's mode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="processes decoding images while the model runs (0: in the main process)")
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                        help="record unreadable files in the 'error' column instead of stopping")
    parser.add_argument("--inference", choices=[AUTO, *VARIANTS], default=AUTO,
                        help="which forward runs: auto = onnxruntime when model.onnx matches the folder and "
                             "onnxruntime is installed, else PyTorch channels_last; eager = the reference")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.workers < 0:
        raise SystemExit("--batch-size must be at least 1 and --workers at least 0")
    cfg = predict_folder.PredictConfig(model=args.model, images=args.images, out=args.out, tta=args.tta,
                                       batch_size=args.batch_size, skip_bad=args.skip_bad, workers=args.workers,
                                       progress=args.progress, revision=args.revision, variant=args.inference)
    try:
        summary = predict_folder.run(cfg)
    except ImageLoadError as err:
        print(f"error: {err}\n(re-run with --skip-bad to record unreadable files and continue)", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
