"""`skinlesion fit-features`: after training, fit what the model's penultimate-layer features serve.

One pass over the training split's features fits the not-a-dermoscopic-image check (threshold at the
--ood-quantile of the validation split's scores: ood_stats.safetensors) and builds the similar-cases
index (case_index.safetensors), both written into the model folder and recorded in its config.json
with the sha256 of the weights, so they are refused after retraining: rerun this. The split comes from
the folder's own split_manifest.csv (--manifest must be that same file).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..data.layouts import LAYOUTS
from ..data.table import DataError
from ..hub import HubUnavailableError
from ..imageio import ImageLoadError
from ..inference import cases, ood
from ..models.folder import ModelFolderError
from ..taxonomy import parse_label_map
from ..training import fit_features
from .common import command_parser


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = command_parser(prog, __doc__.split("\n", 2)[2], [
        f"{prog} --model weights --data ../shared/data/HAM10000",
        f"{prog} --model weights --data ../shared/data/HAM10000 ../shared/data/ISIC2017_train ../shared/data/ISIC2017_val",
        f"{prog} --model weights --data ../shared/data/HAM10000 --ood-method mahalanobis+layers "
        "--ood-taps blocks.4 blocks.5 blocks.6"])
    parser.add_argument("--model", required=True, help="local model folder (the files are written into it)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, nargs="+", metavar="SOURCE",
                   help="the training source(s) the model folder was trained on, as given to train.py --data")
    g.add_argument("--manifest", default=None, help="split manifest (default: the folder's split_manifest.csv)")
    g.add_argument("--layout", choices=LAYOUTS, default=None, help="override the auto-detected layout")
    g.add_argument("--label-map", default=None, metavar="SRC=DST,...", help="map data labels onto model labels")
    g.add_argument("--limit", type=int, default=0, help="at most N images per split (seeded; 0 = all): trial runs")
    g.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("out-of-distribution detector")
    g.add_argument("--ood", action=argparse.BooleanOptionalAction, default=True, help="fit the OOD detector")
    g.add_argument("--ood-method", choices=ood.METHODS, default=ood.DEFAULT_METHOD)
    g.add_argument("--ood-quantile", type=float, default=ood.DEFAULT_QUANTILE,
                   help="share of VALIDATION images below the threshold (the expected false-flag rate)")
    g.add_argument("--knn-k", type=int, default=ood.DEFAULT_KNN_K, help="k of --ood-method knn / mahalanobis+knn")
    g.add_argument("--ood-taps", nargs="+", default=[], metavar="MODULE",
                   help="--ood-method mahalanobis+layers: modules whose spatial mean/std per channel it also "
                        "models, e.g. blocks.5 blocks.6")
    g = parser.add_argument_group("similar-cases index")
    g.add_argument("--index", action=argparse.BooleanOptionalAction, default=True, help="build the case index")
    g.add_argument("--index-dims", type=int, default=cases.DEFAULT_DIMS, help="PCA dimensions of the index")
    g.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=True,
                   help="ship small WebP pictures of the indexed images (case_thumbnails.safetensors, <= 15 MB)")
    g = parser.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images")
    g.add_argument("--save-features", default=None, metavar="NPZ", help="also save the train features (no pixels)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


def config_from_args(args: argparse.Namespace) -> fit_features.FitFeaturesConfig:
    return fit_features.FitFeaturesConfig(
        model=args.model, data=tuple(args.data), manifest=args.manifest, layout=args.layout,
        label_map=parse_label_map(args.label_map), fit_ood=args.ood, ood_method=args.ood_method,
        ood_quantile=args.ood_quantile, knn_k=args.knn_k, ood_taps=tuple(args.ood_taps),
        build_index=args.index, index_dims=args.index_dims, thumbnails=args.thumbnails,
        batch_size=args.batch_size, workers=args.workers, limit=args.limit, seed=args.seed,
        save_features=args.save_features, progress=args.progress, command=getattr(args, "invocation", None))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        summary = fit_features.run(cfg)
    except (DataError, ModelFolderError, HubUnavailableError, ImageLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"config": asdict(cfg), **summary}, indent=2, default=str))
    return 0
