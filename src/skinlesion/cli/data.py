"""`python -m skinlesion.data describe PATH` and `python -m skinlesion.data split PATH ... --out CSV`."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinlesion.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="print layout, counts and problems as JSON")
    _add_source_args(d)
    d.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image to find corrupt files")
    s = sub.add_parser("split", help="write a lesion-grouped stratified split manifest (image_id,split)")
    _add_source_args(s)
    s.add_argument("--val", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="manifest CSV to write")
    s.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
