"""model.onnx next to the weights (`skinlesion export onnx --model FOLDER`).

The graph has a dynamic batch axis (TTA views and images share it) and three outputs: `logits`,
`features`, the penultimate-layer features plus the statistics of the OOD detector's tapped modules
(`features.py`) that the out-of-distribution check and the similar-cases index use, so the ONNX path gives
the same flags and cases as PyTorch, and `feature_map`, what `forward_features` returns, from which the
Predictor computes a CAM in PyTorch through the head alone (`cam.compute_cam_from_map`) when the model's
CAM target layer outputs that map. onnxruntime computes only the outputs a caller fetches, so batch
paths never pay for the map. (An architecture whose head is not `classifier(pre_logits)` is exported with
logits only.) The file records the sha256 of the model.safetensors it came from and the tapped modules,
so the Predictor refuses a stale model.onnx after retraining or refitting the detector. It is verified
against PyTorch with onnxruntime before it replaces any existing file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import MODEL_WEIGHTS_FILE, ONNX_FILE
from ..models.folder import ModelFolderError, file_sha256, load_model_folder
from . import features as feature_split
from . import ood
from .onnx_runtime import (
    ONNX_FEATURES_OUTPUT,
    ONNX_MAP_OUTPUT,
    ONNX_TAPS_KEY,
    ONNX_WEIGHTS_HASH_KEY,
    OnnxForward,
)

DEFAULT_OPSET = 18
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
# Largest batch the graph accepts; TTA 'full' (8 views) x a 256-image batch fits.
MAX_BATCH = 4096
# Largest feature difference allowed, relative to the largest feature magnitude.
FEATURE_RTOL = 1e-3


class ExportError(RuntimeError):
    """The ONNX export failed or its outputs do not match PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    path: str
    opset: int
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    same_top1: bool
    max_rel_feature_diff: float | None = None  # None: exported with logits only
    max_rel_map_diff: float | None = None      # None: exported without the feature map
    taps: tuple[str, ...] = ()


def export_onnx(folder: str | Path, *, opset: int = DEFAULT_OPSET, atol_probs: float = 1e-4,
                seed: int = 0, taps: Sequence[str] | None = None) -> ExportReport:
    """Export the folder's model to `folder/model.onnx`, verified on a seeded random batch of 3.

    `taps`: modules whose statistics the features output carries (default: what the folder's OOD
    detector taps, so the file serves the folder as it is)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a local model folder (download a Hub model to a folder first)")
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or newer")
    loaded = load_model_folder(folder, device="cpu")
    model = loaded.model.eval()
    size = loaded.preprocessing.input_size
    # The features output carries what the folder's OOD detector taps (features.py), so ONNX serves it too.
    if taps is None:
        taps = (loaded.extras.get(ood.EXTRAS_KEY) or {}).get("params", {}).get("taps", ())
    taps = tuple(taps)
    try:
        feature_split.probe_feature_dim(model, size, taps=taps)
    except feature_split.FeatureSplitError:
        graph, outputs, taps = model, [OUTPUT_NAME], ()
    else:
        from . import cam  # imports pytorch-grad-cam (seconds): only here, where a CAM target is asked about

        with_map = cam.cam_from_map_supported(model, size)
        graph = feature_split.LogitsAndFeatures(model, taps, with_map=with_map).eval()
        outputs = [OUTPUT_NAME, ONNX_FEATURES_OUTPUT] + [ONNX_MAP_OUTPUT] * with_map
    # Batch 2, not 1: torch.export specialises size-1 dimensions, which would pin the batch axis.
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=outputs, dynamic_shapes=({0: batch},),
                                    opset_version=opset, external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"{folder}: torch.onnx.export failed for {loaded.architecture!r}: {err}") from err
    weights_sha256 = file_sha256(folder / MODEL_WEIGHTS_FILE)
    program.model.metadata_props[ONNX_WEIGHTS_HASH_KEY] = weights_sha256
    program.model.metadata_props[ONNX_TAPS_KEY] = json.dumps(list(taps))
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".model.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        program.save(tmp, external_data=False)
        report = verify_onnx(model, tmp, weights_sha256, size=size, seed=seed + 1, taps=taps)
        # Features feed thresholded scores (OOD) and rankings (cases), the map the CAM: hold them to a
        # tolerance relative to their scale, like the probabilities.
        if not report.same_top1 or report.max_abs_prob_diff > atol_probs or any(
                diff is not None and diff > FEATURE_RTOL for diff in (report.max_rel_feature_diff,
                                                                      report.max_rel_map_diff)):
            raise ExportError(f"{folder}: ONNX outputs differ from PyTorch (max prob diff "
                              f"{report.max_abs_prob_diff:.2e}, relative feature diff {report.max_rel_feature_diff}, "
                              f"relative map diff {report.max_rel_map_diff}, same top-1: {report.same_top1}); "
                              "not written")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the folder's other files are world-readable
        os.replace(tmp, folder / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path=str(folder / ONNX_FILE), opset=opset, max_abs_logit_diff=report.max_abs_logit_diff,
                        max_abs_prob_diff=report.max_abs_prob_diff, same_top1=report.same_top1,
                        max_rel_feature_diff=report.max_rel_feature_diff, max_rel_map_diff=report.max_rel_map_diff,
                        taps=taps)


def _relative_diff(got: torch.Tensor | None, expected: torch.Tensor) -> float | None:
    if got is None:
        return None
    return float((got - expected.float()).abs().max()) / float(expected.abs().max().clamp_min(1e-6))


def verify_onnx(model: torch.nn.Module, onnx_path: Path, weights_sha256: str, *, size: int,
                seed: int = 1, taps: tuple[str, ...] = ()) -> ExportReport:
    """Compare onnxruntime with eager PyTorch on a seeded random batch of 3 (an odd, unseen batch size)."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        eager = model(x).float()
    session = OnnxForward(onnx_path, weights_sha256=weights_sha256)
    onnx_logits, onnx_features, onnx_map = session.run(x, with_map=True)
    feature_diff = map_diff = None
    if onnx_features is not None:
        with torch.inference_mode():
            _, eager_features, eager_map = feature_split.split_forward_with_map(model, x, taps)
        feature_diff, map_diff = _relative_diff(onnx_features, eager_features), _relative_diff(onnx_map, eager_map)
    return ExportReport(
        path=str(onnx_path), opset=-1,
        max_abs_logit_diff=float((onnx_logits - eager).abs().max()),
        max_abs_prob_diff=float((onnx_logits.softmax(-1) - eager.softmax(-1)).abs().max()),
        same_top1=bool(torch.equal(onnx_logits.argmax(-1), eager.argmax(-1))),
        max_rel_feature_diff=feature_diff, max_rel_map_diff=map_diff, taps=taps,
    )
