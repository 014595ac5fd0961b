"""`skinlesion ensemble`: combine trained model folders into one model folder (no training).

The members' pooled features are concatenated and their linear classifiers placed side by side, each
scaled by weight / temperature: the ensemble's logits are the weighted sum of the members' calibrated
logits. Members must share the labels and the split manifest (a member trained on another split has seen
the validation or test images). The first member's preprocessing (input size, crop, field-of-view crop)
is the ensemble's; each member's own mean/std is re-applied inside the model. Then, as for any folder:
`evaluate.py --fit-temperature` and `skinlesion fit-features` (scripts/post_training.sh).
"""

from __future__ import annotations

import argparse
import json

from .common import command_parser, report_error

EXAMPLE = "{prog} --member runs/ship2 --member runs/ship4 --out runs/ensemble"


def build_parser(prog: str) -> argparse.ArgumentParser:
    description = __doc__.split("\n", 2)[2]
    parser = command_parser(prog, description, [EXAMPLE.format(prog=prog),
                                                f"{prog} --member A --member B --weight 0.6 0.4 --out C"])
    parser.add_argument("--member", action="append", required=True, metavar="FOLDER",
                        help="a trained model folder; repeat (at least two)")
    parser.add_argument("--weight", type=float, nargs="+", default=None,
                        help="one weight per member (default: equal); normalised to sum to 1")
    parser.add_argument("--out", required=True, help="new model folder to write")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..models.ensemble import EnsembleError, write_ensemble
    from ..models.folder import ModelFolderError

    try:
        summary = write_ensemble(args.member, args.out, args.weight, command=getattr(args, "invocation", None))
    except (EnsembleError, ModelFolderError) as err:
        return report_error("skinlesion ensemble", err, 2)
    print(json.dumps(summary, indent=2))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"next: python evaluate.py --model {args.out} --data HAM10000_DIR --split val --fit-temperature "
          f"--tta flips --out {args.out}/eval/val, then skinlesion fit-features --model {args.out} --data HAM10000_DIR")
    return 0
