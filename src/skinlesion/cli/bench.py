"""`skinlesion bench train|inference|app`: speed as ratios measured in one run, printed as JSON.

Each benchmark times the real path and its bare counterpart interleaved in one run, so a busy shared
machine slows both alike: compare the ratios, not the absolute times. The README has the tables and
the machine they were measured on; run them with `nice -n 19` beside other work.
"""

from __future__ import annotations

import argparse
import json

from .common import add_command, command_parser


def _add_train(commands: argparse._SubParsersAction, prog: str, description: str) -> None:
    p = add_command(commands, "train", "the real training loop against the bare step (input pipeline cost)",
                    description + "\n\ntrain: `loop` iterates the prepared DataLoader (workers, augmentation, "
                    "collation) and steps; `bare` repeats the step on one batch in memory. Without --data, "
                    "synthetic images are written to a temporary folder.",
                    [f"{prog} train --model resnet18 --image-size 128",
                     f"{prog} train --model lesion_cnn --image-size 64 --steps 5 --data ../shared/data/HAM10000"])
    p.add_argument("--model", required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each kind (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    p.add_argument("--data", default=None, help="a dataset folder; default: synthetic images")
    p.add_argument("--images", type=int, default=512, help="synthetic images to write (without --data)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: TrainConfig's)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(bench=_run_train)


def _run_train(args: argparse.Namespace) -> dict:
    from ..bench import train

    return train.run(args.model, args.image_size, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                     data=args.data, workers=args.workers, channels_last=args.channels_last, n_images=args.images)


def _add_inference(commands: argparse._SubParsersAction, prog: str, description: str) -> None:
    from ..bench.inference import InferenceBenchConfig
    from ..inference.cam import CAM_METHODS  # seconds to import: only when this command's parser is built
    from ..inference.tta import TTA_MODES

    default = InferenceBenchConfig(model="")
    p = add_command(commands, "inference", "each variant's bare forward; predict, evaluate, a request and the "
                                           "app's /predict against the fastest",
                    description + "\n\ninference: the bare forward of one batch of views in each variant (eager, "
                    "channels_last, onnxruntime when model.onnx serves the folder), each real path on the variant "
                    "the Predictor chooses (share_of_bare, goal >= 0.85 for predict and evaluate), /predict of "
                    "app.py against `app.py --inference eager` (over_eager, goal <= 0.7), the explained request per "
                    "variant, and extras_over_request (goal <= 0.10).",
                    [f"{prog} inference --model weights",
                     f"{prog} inference --model weights --image-dir ../shared/data/ISIC2017_test/images --images 128"])
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--repeats", type=int, default=default.repeats, help="interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=default.warmup, help="untimed rounds first")
    p.add_argument("--tta", default=None, choices=sorted(TTA_MODES), help="default: the model folder's mode")
    p.add_argument("--method", default=default.method, choices=sorted(CAM_METHODS))
    p.add_argument("--images", type=int, default=default.images,
                   help="images of the predict and evaluate paths per round (0 skips both)")
    p.add_argument("--image-dir", default=None, help="real images to use (default: synthetic 600x450 JPEGs)")
    p.add_argument("--batch-size", type=int, default=default.batch_size, help="images per batch (x TTA views)")
    p.add_argument("--workers", type=int, default=default.workers, help="DataLoader processes of the batch paths")
    p.add_argument("--app", action=argparse.BooleanOptionalAction, default=default.app,
                   help="time /predict of `python app.py` against `app.py --inference eager` (two servers)")
    p.add_argument("--app-requests", type=int, default=default.app_requests)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.set_defaults(bench=_run_inference)


def _run_inference(args: argparse.Namespace) -> dict:
    import torch

    from ..bench import inference

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return inference.run(inference.InferenceBenchConfig(
        model=args.model, repeats=args.repeats, warmup=args.warmup, tta=args.tta, method=args.method,
        images=args.images, image_dir=args.image_dir, batch_size=args.batch_size, workers=args.workers,
        app=args.app, app_requests=args.app_requests))


def _add_app(commands: argparse._SubParsersAction, prog: str, description: str) -> None:
    from ..bench.app import BenchConfig, SpaceBenchConfig

    default = BenchConfig(model="")
    p = add_command(commands, "app", "the Gradio app against the library call; with --space, a Space's cold "
                                     "start and memory",
                    description + "\n\napp: ui_overhead = median /predict over HTTP / median (predict + explain) "
                    "(goal <= 1.15), and the cold start of `python app.py`. --space starts the app exactly as a "
                    "Space does and reports cold start and resident memory against the goals (<= 20 s, <= 1.5 GB).",
                    [f"{prog} app --model weights --threads 1", f"{prog} app --space"])
    p.add_argument("--space", action=argparse.BooleanOptionalAction, default=False,
                   help="measure as a Space runs the app (`python app.py`, no arguments, torch's default "
                        "threads): cold start and resident memory after --requests /predict calls")
    p.add_argument("--model", default=None,
                   help="model folder or Hub id (default: weights/); with --space, the MODEL_ID variable")
    p.add_argument("--requests", type=int, default=None,
                   help=f"timed requests per side (default {default.requests}); with --space, requests "
                        f"before memory is read (default {SpaceBenchConfig.requests})")
    p.add_argument("--warmup", type=int, default=default.warmup, help="untimed requests per side")
    p.add_argument("--size", type=int, nargs=2, default=(default.width, default.height), metavar=("W", "H"),
                   help="synthetic image size")
    p.add_argument("--method", default=default.method, help="CAM method")
    p.add_argument("--startup-timeout", type=float, default=default.startup_timeout)
    p.add_argument("--settle", type=float, default=default.settle_s, help="pause (s) before each timed call")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the app and here")
    p.add_argument("--seed", type=int, default=default.seed)
    p.set_defaults(bench=_run_app)


def _run_app(args: argparse.Namespace) -> dict:
    from ..bench import app

    if args.requests is not None and args.requests < 1:
        raise SystemExit("--requests must be at least 1")
    if args.space:
        if args.threads is not None:
            raise SystemExit("--threads does not apply to --space: a Space runs with torch's default threads")
        requests = app.SpaceBenchConfig.requests if args.requests is None else args.requests
        return app.run_space(app.SpaceBenchConfig(
            method=args.method, requests=requests, width=args.size[0], height=args.size[1], model_id=args.model,
            startup_timeout=args.startup_timeout, seed=args.seed))
    return app.run(app.BenchConfig(
        model=args.model or str(app.REPO_ROOT / "weights"),
        requests=app.BenchConfig.requests if args.requests is None else args.requests, warmup=args.warmup,
        width=args.size[0], height=args.size[1], method=args.method, startup_timeout=args.startup_timeout,
        settle_s=args.settle, threads=args.threads, seed=args.seed))


def build_parser(prog: str) -> argparse.ArgumentParser:
    description = __doc__.split("\n", 2)[2].strip()
    parser = command_parser(prog, description, [f"{prog} train --model resnet18 --image-size 128",
                                                f"{prog} inference --model weights",
                                                f"{prog} app --space"])
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="{train,inference,app}")
    _add_train(commands, prog, description)
    _add_inference(commands, prog, description)
    _add_app(commands, prog, description)
    return parser


def run(args: argparse.Namespace) -> int:
    print(json.dumps(args.bench(args), indent=2))
    return 0
