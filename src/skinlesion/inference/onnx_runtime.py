"""onnxruntime behind the Predictor: the session over model.onnx, and whether this folder may use it.

`skinlesion export onnx` writes model.onnx with the sha256 of the weights it came from and the modules
whose statistics its features output carries (the OOD detector's taps). `open_onnx` refuses a file
exported from other weights and `onnx_mismatch` one whose outputs do not serve this folder (no
features, other taps), so a stale model.onnx is never used after retraining or refitting: the Predictor
then runs PyTorch and says why (or raises, when onnxruntime was asked for by name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..constants import ONNX_FILE
from ..models.folder import ModelFolderError

logger = logging.getLogger(__name__)

ONNX_WEIGHTS_HASH_KEY = "skinlesion.weights_sha256"  # model.onnx metadata: sha256 of the weights it came from
ONNX_TAPS_KEY = "skinlesion.taps"                    # model.onnx metadata: JSON list of the tapped modules
ONNX_FEATURES_OUTPUT = "features"                    # penultimate-layer features (+ tap statistics)
ONNX_MAP_OUTPUT = "feature_map"                      # what forward_features returns: where a CAM can start
REEXPORT = "re-export it with `skinlesion export onnx --model FOLDER`"


class OnnxUnavailableError(RuntimeError):
    """onnxruntime was asked for by name but cannot serve this folder on this device."""


class OnnxForward:
    """An onnxruntime session over `model.onnx`, refusing a file exported from other weights."""

    def __init__(self, onnx_path: Path, *, weights_sha256: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        # Without spinning, onnxruntime's idle workers sleep at once instead of busy-waiting for the next
        # run: between runs the same cores decode images (DataLoader workers) or run the CAM in PyTorch.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(ONNX_WEIGHTS_HASH_KEY) != weights_sha256:
            raise ModelFolderError(f"{onnx_path} was not exported from the current weights (stale or foreign file); "
                                   f"{REEXPORT}")
        # None: exported before the taps were recorded (only the feature width can be checked then).
        self.taps: tuple[str, ...] | None = tuple(json.loads(meta[ONNX_TAPS_KEY])) if ONNX_TAPS_KEY in meta else None
        self.input_name = self.session.get_inputs()[0].name
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.logits_name = self.session.get_outputs()[0].name
        self.has_features = ONNX_FEATURES_OUTPUT in outputs
        self.has_map = ONNX_MAP_OUTPUT in outputs
        width = outputs[ONNX_FEATURES_OUTPUT].shape[-1] if self.has_features else None
        self.feature_width: int | None = width if isinstance(width, int) else None
        self.source = str(onnx_path)

    def run(self, batch: torch.Tensor, *, with_map: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(N, 3, S, S) -> ((N, K) logits, (N, D) features or None, (N, C, h, w) feature map or None).

        The map is fetched only when asked for (a CAM), and only from a graph that has it.
        """
        names = [self.logits_name] + [ONNX_FEATURES_OUTPUT] * self.has_features
        names += [ONNX_MAP_OUTPUT] * (with_map and self.has_map)
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        out = dict(zip(names, self.session.run(names, {self.input_name: array}), strict=True))
        tensor = {name: torch.from_numpy(value) for name, value in out.items()}
        return tensor[self.logits_name], tensor.get(ONNX_FEATURES_OUTPUT), tensor.get(ONNX_MAP_OUTPUT)

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, S, S) -> ((N, K) logits, (N, D) features or None for a logits-only graph)."""
        return self.run(batch)[:2]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)[0]


def open_onnx(folder: Path, *, required: bool, device: torch.device, weights_sha256: str
              ) -> tuple[OnnxForward | None, str | None]:
    """The folder's model.onnx as a session, or (None, why not). `required` (onnxruntime asked for by name)
    raises instead of saying why."""
    path = folder / ONNX_FILE
    if not path.is_file():
        reason = f"{folder} has no {ONNX_FILE}; create it with `skinlesion export onnx --model FOLDER`"
    elif device.type != "cpu":
        reason = f"onnxruntime runs on the CPU provider only here, not on {device}"
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            reason = f"{folder} has {ONNX_FILE} but onnxruntime is not installed (pip install onnxruntime)"
        else:
            try:
                return OnnxForward(path, weights_sha256=weights_sha256), None
            except ModelFolderError as err:
                if required:
                    raise
                reason = str(err)
    if required:
        raise OnnxUnavailableError(f"onnxruntime was asked for, but {reason}")
    return None, reason


def onnx_mismatch(onnx: OnnxForward, *, taps: Sequence[str], feature_width: int | None,
                  needs_features: bool) -> str | None:
    """Why this session's outputs do not serve a Predictor with these taps and feature width; None if they do."""
    if not onnx.has_features:
        return f"{onnx.source} outputs logits only; {REEXPORT}" if needs_features else None
    if onnx.taps is not None and onnx.taps != tuple(taps):
        return (f"{onnx.source} carries the statistics of {list(onnx.taps)} but the features asked for tap "
                f"{list(taps)} (the folder's OOD detector's); {REEXPORT}")
    if onnx.feature_width is not None and feature_width is not None and onnx.feature_width != feature_width:
        return (f"{onnx.source} outputs {onnx.feature_width} feature values but this folder needs {feature_width} "
                f"(taps {list(taps)}); {REEXPORT}")
    return None
