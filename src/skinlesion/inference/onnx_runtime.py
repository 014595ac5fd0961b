"""onnxruntime behind the Predictor: the session over model.onnx, and when to use it.

`skinlesion export onnx` writes model.onnx with the sha256 of the weights it came from; the session
refuses a file exported from other weights, so a stale model.onnx is never used after retraining.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..constants import ONNX_FILE
from ..models.folder import ModelFolderError, file_sha256

logger = logging.getLogger(__name__)

ONNX_WEIGHTS_HASH_KEY = "skinlesion.weights_sha256"  # model.onnx metadata: sha256 of the weights it came from
ONNX_FEATURES_OUTPUT = "features"                    # the graph's second output (penultimate-layer features)


class OnnxUnavailableError(RuntimeError):
    """ONNX inference was requested (use_onnx=True) but cannot be used for this folder or device."""


class OnnxForward:
    """An onnxruntime session over `model.onnx`, refusing a file exported from other weights."""

    def __init__(self, onnx_path: Path, weights_path: Path, *, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        exported_from = self.session.get_modelmeta().custom_metadata_map.get(ONNX_WEIGHTS_HASH_KEY)
        if exported_from is None or exported_from != file_sha256(weights_path):
            raise ModelFolderError(
                f"{onnx_path} was not exported from the current {weights_path.name} (stale or foreign file); "
                "re-export it with `skinlesion export onnx --model FOLDER`, or pass use_onnx=False")
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = [outputs[0]] + ([ONNX_FEATURES_OUTPUT] if ONNX_FEATURES_OUTPUT in outputs else [])
        self.source = str(onnx_path)

    @property
    def has_features(self) -> bool:
        """Whether the graph also outputs the penultimate-layer features (exports since the OOD detector)."""
        return len(self.output_names) == 2

    @property
    def feature_width(self) -> int | None:
        """Columns of the features output (penultimate + tapped statistics), when the graph says."""
        if not self.has_features:
            return None
        width = next(o.shape for o in self.session.get_outputs() if o.name == ONNX_FEATURES_OUTPUT)[-1]
        return width if isinstance(width, int) else None

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, S, S) -> ((N, K) logits, (N, D) features or None for a logits-only graph)."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        out = self.session.run(self.output_names, {self.input_name: array})
        return torch.from_numpy(out[0]), (torch.from_numpy(out[1]) if len(out) > 1 else None)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(batch)[0]


def want_onnx(folder: Path, use_onnx: bool | None, device: torch.device) -> bool:
    if use_onnx is False:
        return False
    exists = (folder / ONNX_FILE).is_file()
    if use_onnx is None:
        # Automatic: only on CPU (the sessions here use the CPU provider) and when the package is there.
        if not exists or device.type != "cpu":
            return False
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            logger.warning("%s has %s but onnxruntime is not installed: using PyTorch", folder, ONNX_FILE)
            return False
        return True
    if not exists:
        raise OnnxUnavailableError(f"use_onnx=True but {folder} has no {ONNX_FILE}; "
                                   "create it with `skinlesion export onnx --model FOLDER`")
    if device.type != "cpu":
        raise OnnxUnavailableError(f"use_onnx=True runs on the CPU provider only, not on {device}")
    return True
