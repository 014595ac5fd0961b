"""Inference speed as ratios measured in one run (`skinlesion bench inference --model M`).

- `request_over_bare`: median of one full app request (decode + preprocess + TTA prediction + one CAM
  + overlay at the image's resolution) over the median of the bare model calls that request needs
  (the batched TTA forward, and the CAM's forward + backward on the same views). Goal <= 1.2.
- `tta_batched_over_sequential`: one forward over all views vs one forward per view.
- `onnx_over_eager`: onnxruntime vs eager PyTorch for the same batched TTA forward (when model.onnx exists).
- `extras_over_request`: what the features-based extras add to one request: the out-of-distribution
  score, the k nearest cases and the retrieval vote (from the features the forward already returned),
  over the median request. Goal <= 0.10. None when the folder has neither (`skinlesion fit-features`).
- `folder_images_per_s`: `skinlesion predict` over a folder of synthetic images.

Request and bare calls are interleaved repeat by repeat, so a busy shared machine slows both alike.
Absolute times are printed for context only; compare ratios.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..constants import ONNX_FILE
from ..inference import cam, cases
from ..inference import tta as tta_views
from ..inference.predictor import Predictor
from ..models.folder import resolve_folder

# HAM10000's original resolution: the app's typical upload.
BENCH_IMAGE_SIZE = (600, 450)


def synthetic_jpeg(seed: int, size: tuple[int, int] = BENCH_IMAGE_SIZE) -> bytes:
    """A skin-toned JPEG with a dark blob (real pixels are not needed to time the code path)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (w * 0.25)) ** 2 + ((yy - h / 2) / (h * 0.25)) ** 2 <= 1.0
    img = np.empty((h, w, 3), dtype=np.float32)
    img[...] = (220, 170, 150)
    img[inside] = (90, 50, 30)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_ms(samples: list[float]) -> float:
    return round(1000.0 * statistics.median(samples), 3)


def bare_cam_pass(model: torch.nn.Module, stacked: torch.Tensor, class_index: int) -> None:
    """Only the model work a CAM needs: forward to the logits, backward from the class score to the target layer."""
    layer = cam.cam_target(model).layer
    handle = layer.register_forward_hook(cam.cut_graph_hook, prepend=True)
    try:
        with torch.enable_grad():
            model(stacked)[:, class_index].sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)


def run(model: str, repeats: int = 20, *, tta: str | None = None, method: str = "gradcam",
        folder_images: int = 32, batch_size: int = 32, warmup: int = 2) -> dict:
    """Time the request path against its bare model calls; returns the JSON-able report."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    predictor = Predictor.from_pretrained(model, tta=tta, use_onnx=False)
    mode = predictor.tta
    views = tta_views.get_views(mode)
    net = predictor.loaded.model
    jpeg = synthetic_jpeg(0)
    x = predictor.preprocess(jpeg)[0].unsqueeze(0)  # (1, 3, S, S)
    stacked = tta_views.stack_views(x, views)        # (V, 3, S, S)
    label = predictor.predict(jpeg).label
    index = predictor.label_names.index(label)

    def request() -> None:
        predictor.explain(jpeg, method=method)

    def bare_tta() -> None:
        with torch.inference_mode():
            net(stacked)

    def sequential_tta() -> None:
        with torch.inference_mode():
            for view in views:
                net(view.apply(x))

    def bare_cam() -> None:
        bare_cam_pass(net, stacked, index)

    view_logits, features = predictor.forward_views_with_features(x)
    has_extras = predictor.ood_detector is not None or predictor.case_index is not None

    def extras() -> None:
        # Exactly what predictions_from_logits adds on top of the softmax for one image.
        predictor.ood_scores(view_logits, features)
        found = predictor.nearest_cases(features)
        if found is not None:
            cases.retrieval_vote(found[0][:predictor.vote_k], predictor.label_names, prior=predictor.case_index.class_prior)

    for _ in range(warmup):
        request(), bare_tta(), bare_cam(), sequential_tta(), extras()
    times: dict[str, list[float]] = {"request": [], "bare_tta": [], "bare_cam": [], "sequential_tta": [],
                                     "extras": []}
    for _ in range(repeats):
        times["request"].append(_seconds(request))
        times["bare_tta"].append(_seconds(bare_tta))
        times["bare_cam"].append(_seconds(bare_cam))
        times["sequential_tta"].append(_seconds(sequential_tta))
        times["extras"].append(_seconds(extras))
    medians = {name: _median_ms(samples) for name, samples in times.items()}
    bare_ms = medians["bare_tta"] + medians["bare_cam"]
    report: dict = {
        "model": model, "architecture": predictor.loaded.architecture, "input_size": predictor.preprocessing.input_size,
        "tta": mode, "views": len(views), "method": method, "image_size": list(BENCH_IMAGE_SIZE),
        "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "median_ms": {**medians, "bare_total": round(bare_ms, 3)},
        "request_over_bare": round(medians["request"] / bare_ms, 3),
        "tta_batched_over_sequential": round(medians["bare_tta"] / medians["sequential_tta"], 3),
        "extras_over_request": round(medians["extras"] / medians["request"], 4) if has_extras else None,
        "extras": {"ood_method": predictor.ood_detector.method if predictor.ood_detector else None,
                   "case_index_size": len(predictor.case_index) if predictor.case_index is not None else None},
    }
    folder = resolve_folder(model)
    if (folder / ONNX_FILE).is_file():
        onnx_predictor = Predictor.from_pretrained(folder, tta=mode, use_onnx=True)
        for _ in range(warmup):
            onnx_predictor.forward_views(x), predictor.forward_views(x)
        onnx_t, eager_t = [], []
        for _ in range(repeats):
            onnx_t.append(_seconds(lambda: onnx_predictor.forward_views(x)))
            eager_t.append(_seconds(lambda: predictor.forward_views(x)))
        report["median_ms"].update(onnx_tta=_median_ms(onnx_t), eager_tta=_median_ms(eager_t))
        report["onnx_over_eager"] = round(statistics.median(onnx_t) / statistics.median(eager_t), 3)
    else:
        report["onnx_over_eager"] = None  # no model.onnx: run `skinlesion export onnx --model M`
    if folder_images > 0:
        report.update(folder_prediction(model, folder_images, batch_size=batch_size, tta=mode))
    return report


def folder_prediction(model: str, n_images: int, *, batch_size: int, tta: str) -> dict:
    """Images per second of `skinlesion predict` (decode + batched TTA prediction + CSV) on synthetic JPEGs."""
    from ..inference.predict_folder import PredictConfig
    from ..inference.predict_folder import run as predict_folder

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        for i in range(n_images):
            (root / f"img_{i:04d}.jpg").write_bytes(synthetic_jpeg(i))
        cfg = PredictConfig(model=model, images=root, out=Path(tmp) / "predictions.csv", tta=tta,
                            batch_size=batch_size, progress=False)
        seconds = _seconds(lambda: predict_folder(cfg))
    return {"folder_images": n_images, "folder_seconds": round(seconds, 3),
            "folder_images_per_s": round(n_images / seconds, 2)}
