"""`skinlesion data describe|split`: what a dataset holds, and a lesion-grouped split manifest.

Any layout is read (HAM10000, ISIC 2017/2018/2019, PH2, one folder per class, a saved or Hub Hugging
Face dataset), auto-detected unless --layout says. `split` keeps every image of a lesion (and the
published duplicate pairs) in one split, stratified by class, and writes the `image_id,split` manifest
that training and evaluation both read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.layouts import LAYOUTS, load_table, verify_images
from ..data.splits import lesion_grouped_split, merge_groups, read_duplicate_pairs, write_manifest
from ..data.table import DataError
from ..hub import HubUnavailableError
from ..taxonomy import parse_label_map
from .common import add_command, command_parser

DUPLICATES_FILE = "duplicate_lesion_pairs.csv"


def _duplicates_for(root: str, explicit: str | None) -> list[tuple[str, str]]:
    path = Path(explicit) if explicit else Path(root) / DUPLICATES_FILE
    if explicit and not path.exists():
        raise DataError(f"{path}: duplicate-pairs file not found")
    return read_duplicate_pairs(path) if path.exists() else []


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="dataset folder, CSV, saved HF dataset folder or Hub dataset id")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="override the auto-detected layout")
    p.add_argument("--label-map", default=None, help="rename labels, e.g. common_nevus=nv,melanoma=mel")
    p.add_argument("--duplicates", default=None,
                   help=f"CSV of image pairs showing one lesion (default: {DUPLICATES_FILE} beside the data)")
    p.add_argument("--hf-split", default=None, help="split of a Hugging Face DatasetDict (default: train)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    description = __doc__.split("\n", 2)[2]
    parser = command_parser(prog, description, [
        f"{prog} describe ../shared/data/HAM10000",
        f"{prog} split ../shared/data/HAM10000 --val 0.1 --test 0.1 --seed 0 --out manifest.csv"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{describe,split}")
    d = add_command(sub, "describe", "print layout, counts, lesion groups and problems as JSON", description,
                    [f"{prog} describe ../shared/data/HAM10000",
                     f"{prog} describe ../shared/data/PH2 --layout ph2 --label-map common_nevus=nv,melanoma=mel"])
    _add_source_args(d)
    d.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image to find corrupt files")
    s = add_command(sub, "split", "write a lesion-grouped stratified split manifest (image_id,split)", description,
                    [f"{prog} split ../shared/data/HAM10000 --val 0.1 --test 0.1 --seed 0 --out manifest.csv"])
    _add_source_args(s)
    s.add_argument("--val", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="manifest CSV to write")
    s.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        label_map = parse_label_map(args.label_map)
        if args.command == "describe":
            # describe reports bad files and rows instead of stopping at the first one.
            table = load_table(args.path, layout=args.layout, label_map=label_map, skip_bad=True,
                               split=args.hf_split)
            if args.verify:
                table = verify_images(table, skip_bad=True)
            report = table.describe()
            try:
                pairs = _duplicates_for(table.root, args.duplicates)
            except DataError as err:
                pairs = []
                report["problems"].append(str(err))
            if pairs:
                report["n_groups_after_merging_duplicates"] = int(merge_groups(table.frame, pairs).nunique())
            print(json.dumps(report, indent=2))
            return 0
        table = load_table(args.path, layout=args.layout, label_map=label_map, skip_bad=args.skip_bad,
                           split=args.hf_split)
        manifest = lesion_grouped_split(table, val=args.val, test=args.test, seed=args.seed,
                                        duplicate_pairs=_duplicates_for(table.root, args.duplicates))
        write_manifest(manifest, args.out)
        counts = manifest["split"].value_counts().to_dict()
        print(json.dumps({"out": args.out, "splits": counts}, indent=2))
        return 0
    except (DataError, ValueError, OSError, HubUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
