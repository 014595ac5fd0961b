"""Evaluate one or more model folders on a dataset: `python evaluate.py --model runs/x --data DATA --out DIR`.

Writes DIR/report.json (stable keys), DIR/report.md and PNG figures. All the work is in
skinlesion.evaluation; this file only parses the command line into an EvalConfig.

Examples:
  python evaluate.py --model runs/lesion --data ../shared/data/HAM10000 --out runs/lesion/eval/ham_test
  python evaluate.py --model runs/lesion --data ../shared/data/ISIC2017_test --out runs/lesion/eval/isic2017
  python evaluate.py --model runs/a --model runs/b --data ../shared/data/HAM10000 --compare-tta --out cmp/
  python evaluate.py --model runs/lesion --data PH2_by_class \\
      --label-map common_nevus=nv,atypical_nevus=nv,melanoma=mel --out runs/lesion/eval/ph2
  python evaluate.py --model weights --data ../shared/data/HAM10000 --ood-folder runs/ood_sets/everyday_photos \\
      --ood-folder runs/ood_sets/screenshots --out runs/ood   # flag rate of the OOD check on each folder
  python evaluate.py --model weights --data ../shared/data/HAM10000 --by sex age site dx_type --out runs/by
  python evaluate.py --model weights --data ../shared/data/HAM10000 ../shared/data/ISIC2017_test --by source \\
      --out runs/by_source   # HAM10000's test split + the whole of a set the split manifest does not list

Several --data sources: each read by its own layout into one table with a `source` column. With a split
manifest, --split (default test) picks the manifest's split of the sources it lists; a source it does not
list is held out and scored whole (refused under --split val); --split all scores everything.
--by COLUMN reports n, balanced accuracy, melanoma AUC and malignant sensitivity/specificity at the app's
operating point per group of sex, age (bands <30, 30-44, 45-59, 60-74, 75+), site (or localization), source
or dx_type, with bootstrap 95% intervals; groups under 30 images (or short of a class) are noted, not scored.
"""

from __future__ import annotations

import argparse
import json
import sys

from skinlesion.data.layouts import LAYOUTS
from skinlesion.data.table import DataError
from skinlesion.evaluation.evaluate import CalibrationSplitError, EvalConfig, command_line, run
from skinlesion.evaluation.explain_quality import MaskError
from skinlesion.evaluation.view_logits import EVAL_SPLITS
from skinlesion.hub import HubUnavailableError
from skinlesion.imageio import ImageLoadError
from skinlesion.inference.tta import TTA_MODES
from skinlesion.models.folder import ModelFolderError
from skinlesion.taxonomy import parse_label_map


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("models")
    g.add_argument("--model", action="append", required=True, dest="models", metavar="PATH_OR_ID",
                   help="model folder or Hub id; repeat to compare models (the first is the primary)")
    g.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) for Hub ids")
    g.add_argument("--device", default=None, help="torch device (default: the Predictor's choice)")

    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, nargs="+", metavar="SOURCE",
                   help="one or more dataset folders or CSVs (HAM10000, ISIC 2017/2018/2019, class folders), each "
                        "PATH[,name=N][,layout=L][,split=S]")
    g.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="override the auto-detected layout (of every source that does not name its own)")
    g.add_argument("--split", choices=EVAL_SPLITS, default=None,
                   help="split of the sources the manifest lists (default: test); sources it does not list, and "
                        "sets without a manifest, are evaluated whole")
    g.add_argument("--manifest", default=None,
                   help="split manifest CSV (default: the model folder's split_manifest.csv, for HAM10000 "
                        "or any data it lists)")
    g.add_argument("--label-map", default=None, metavar="SRC=DST,...",
                   help="map data labels onto model labels, e.g. common_nevus=nv,melanoma=mel")

    g = parser.add_argument_group("inference")
    g.add_argument("--tta", choices=tuple(TTA_MODES), default=None, help="TTA views (default: the model's own)")
    g.add_argument("--compare-tta", action=argparse.BooleanOptionalAction, default=False,
                   help="also report the same pass without TTA, as a second comparison row")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding images")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")

    g = parser.add_argument_group("statistics and calibration")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--by", action="extend", nargs="+", default=[], metavar="COLUMN",
                   help="also report per group of each metadata column: sex, age (banded), site (= localization), "
                        "source, dx_type; several columns, repeatable")
    g.add_argument("--fit-temperature", action=argparse.BooleanOptionalAction, default=False,
                   help="fit temperature + OOD threshold on the VALIDATION split and write them to the model folder")

    g = parser.add_argument_group("out-of-distribution check and similar cases (need `skinlesion fit-features`)")
    g.add_argument("--ood-folder", action="append", default=[], dest="ood_folders", metavar="DIR",
                   help="folder of non-dermoscopic images: report the share the OOD check flags; repeatable")
    g.add_argument("--cases-k", type=int, default=5, help="k of the similar-cases precision@k")

    g = parser.add_argument_group("explanations")
    g.add_argument("--cam-methods", default="", metavar="NAME,...",
                   help="CAM methods to score, e.g. gradcam,gradcam++,eigencam (default: none)")
    g.add_argument("--cam-images", type=int, default=8, help="images explained per CAM method")
    g.add_argument("--cam-tta", choices=tuple(TTA_MODES), default="none", help="TTA views averaged inside each map")
    g.add_argument("--masks", default=None, help="folder of lesion masks (white = lesion), matched by file stem")
    g.add_argument("--sheet-images", type=int, default=4, help="images on the side-by-side CAM sheets")

    parser.add_argument("--out", required=True, help="output folder")
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str] | None) -> EvalConfig:
    return EvalConfig(
        models=tuple(args.models), data=tuple(args.data), out=args.out, layout=args.layout, split=args.split,
        manifest=args.manifest, label_map=parse_label_map(args.label_map), tta=args.tta,
        compare_tta=args.compare_tta, batch_size=args.batch_size, workers=args.workers, bootstrap=args.bootstrap,
        seed=args.seed, fit_temperature=args.fit_temperature,
        cam_methods=tuple(m.strip() for m in args.cam_methods.split(",") if m.strip()),
        cam_images=args.cam_images, cam_tta=args.cam_tta, masks=args.masks, sheet_images=args.sheet_images,
        revision=args.revision, device=args.device, progress=args.progress, command=command_line(argv),
        ood_folders=tuple(args.ood_folders), cases_k=args.cases_k,
        by=tuple(c.strip() for arg in args.by for c in arg.split(",") if c.strip()),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(config_from_args(args, argv))
    except (DataError, CalibrationSplitError, MaskError, ModelFolderError, HubUnavailableError, ImageLoadError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    headline = {k: result.get(k) for k in ("n_images", "accuracy", "balanced_accuracy", "auc_ovr_macro",
                                           "malignant_auc", "ece", "elapsed_seconds")}
    ood, retrieval = result.get("ood") or {}, result.get("retrieval") or {}
    if ood.get("available"):
        headline["ood_false_flag_rate"] = ood["labelled_set"]["flag_rate"]
        headline["ood_folder_flag_rates"] = {k: v["flag_rate"] for k, v in ood["folders"].items()}
    if retrieval.get("available"):
        headline["retrieval_vote_balanced_accuracy"] = retrieval["vote"]["balanced_accuracy"]
        headline["retrieval_precision_at_k"] = retrieval["precision_at_k"]["macro"]
    print(json.dumps({"out": args.out, **headline}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
