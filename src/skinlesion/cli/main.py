"""`skinlesion COMMAND ...`: the one command-line tool (`train.py`, `evaluate.py` and `app.py` stay scripts).

Each command lives in its own module with `build_parser(prog)` and `run(args)`. Only the chosen
command's module is imported, so `skinlesion --help` and `skinlesion data ...` never wait for torch or
pytorch-grad-cam, which the other commands' flags (TTA modes, CAM methods) need.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from .common import PROG, examples_text


@dataclass(frozen=True)
class Command:
    module: str   # skinlesion.cli.<module>, with build_parser(prog) and run(args)
    summary: str  # one line in `skinlesion --help`


COMMANDS = {
    "predict": Command("predict", "predict a folder of images into a CSV (calibrated, TTA, OOD flag, similar cases)"),
    "explain": Command("explain", "CAM overlays and predictions for images, with one model or side by side"),
    "export": Command("export", "write model.onnx into a model folder, checked against PyTorch"),
    "ensemble": Command("ensemble", "combine trained model folders into one (calibrated geometric mean)"),
    "fit-features": Command("fit_features", "after training: the not-a-dermoscopic-image check and the "
                                            "similar-cases index"),
    "data": Command("data", "describe a dataset, or write a lesion-grouped split manifest"),
    "publish": Command("publish", "deploy the app as a Hugging Face Space, or push a model folder"),
    "bench": Command("bench", "speed as ratios measured in one run: train, inference, app"),
}


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS)) + 2
    listing = "\n".join(f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Calibrated, explainable dermoscopic skin-lesion classification.\n\n"
                    f"commands:\n{listing}\n\n`{PROG} COMMAND --help` says what a command does and shows an example.",
        epilog=examples_text([f"{PROG} predict --model weights --images DIR --out predictions.csv",
                              f"{PROG} data describe ../shared/data/HAM10000"]))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands above")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return parser


def _version() -> str:
    try:
        return version("skinlesion")
    except PackageNotFoundError:  # run from a checkout without `pip install -e .` (e.g. a Space)
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints the help / version, or the error naming the commands; exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"{__package__}.{COMMANDS[name].module}")
    args = module.build_parser(f"{PROG} {name}").parse_args(rest)
    args.invocation = shlex.join([PROG, name, *rest])  # what a command records of how it was run
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
