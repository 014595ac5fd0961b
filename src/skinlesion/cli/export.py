"""`skinlesion export onnx`: write model.onnx into a model folder, checked against PyTorch.

The graph outputs the logits, the penultimate-layer features with the statistics the OOD detector taps
(so the out-of-distribution check and the similar cases work on onnxruntime too) and the feature map a
CAM starts from, and records the sha256 of the weights and the tapped modules. It is compared with
PyTorch on a random batch before it replaces any existing file. The Predictor, `skinlesion predict`,
evaluate.py and the app use it when onnxruntime is installed and it matches the folder (else PyTorch,
saying why); rerun this whenever the weights or the OOD detector change (scripts/ship_model.sh does).
"""

from __future__ import annotations

import argparse
import json

from ..inference.onnx_export import DEFAULT_OPSET, export_onnx
from .common import add_command, command_parser

EXAMPLE = "{prog} onnx --model weights"


def build_parser(prog: str) -> argparse.ArgumentParser:
    description = __doc__.split("\n", 2)[2]
    parser = command_parser(prog, description, [EXAMPLE.format(prog=prog)])
    formats = parser.add_subparsers(dest="format", required=True, metavar="{onnx}")
    onnx = add_command(formats, "onnx", "write model.onnx into the model folder", description,
                       [EXAMPLE.format(prog=prog), f"{prog} onnx --model runs/r18 --opset 18 --atol 1e-4"])
    onnx.add_argument("--model", required=True, help="local model folder")
    onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17 or newer)")
    onnx.add_argument("--atol", type=float, default=1e-4, help="largest allowed probability difference")
    return parser


def run(args: argparse.Namespace) -> int:
    report = export_onnx(args.model, opset=args.opset, atol_probs=args.atol)
    print(json.dumps(report.__dict__, indent=2))
    return 0
