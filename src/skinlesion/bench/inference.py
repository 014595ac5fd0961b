"""Inference speed as ratios measured in one run (`skinlesion bench inference --model M`).

In one run, interleaved round by round so a busy shared machine slows every side alike:
- `bare_forward`: the model alone on one batch of views (`--batch-size` images x the TTA views, logits and
  the features the OOD check and the cases read) in each variant: `eager` (the default memory format),
  `channels_last`, `onnxruntime` (when the folder's model.onnx serves it); each over the fastest.
- `paths`: each real path on the variant the Predictor chose at load, against the fastest bare forward of
  the same views: `predict` (`skinlesion predict`'s rows: decode in DataLoader workers, batched TTA
  prediction with OOD check and cases), `evaluate` (`evaluate.py`'s stream, `view_logits.py`), `request`
  (`Predictor.predict` of one 600x450 upload) and `app_predict` (/predict of `python app.py` over HTTP:
  TTA + CAM + check + cases + overlay). `share_of_bare` = the bare forward's share of the path's time
  (1.0 = the path costs nothing beyond the model; goal >= 0.85 for the batch paths).
- `app_predict.over_eager`: median /predict of this code against an app forced onto the `eager` variant,
  the code path before this benchmark (`app.py --inference eager`; goal <= 0.7).
- `request_variants`: `Predictor.explain` (what /predict runs) per way to run it, over the eager one,
  including onnxruntime for the TTA views with the CAM re-running the whole network in PyTorch, the
  alternative to the CAM from the forward's own feature map (`cam.compute_cam_from_map`).
- `extras_over_request`: what the OOD score, the nearest cases and the vote add to one explained request.

Absolute times are printed for context only; compare ratios.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..constants import MODEL_WEIGHTS_FILE
from ..data.table import LesionTable
from ..imageio import find_images
from ..inference import cases, streaming
from ..inference import features as feature_split
from ..inference import tta as tta_views
from ..inference.onnx_runtime import open_onnx
from ..inference.predictor import Predictor
from ..inference.variants import VARIANTS
from ..models.folder import file_sha256, resolve_folder

# HAM10000's original resolution: the app's typical upload.
BENCH_IMAGE_SIZE = (600, 450)


@dataclass(frozen=True)
class InferenceBenchConfig:
    model: str                              # model folder (or Hub id)
    repeats: int = 3                        # interleaved rounds (medians over them)
    warmup: int = 1                         # untimed rounds first
    tta: str | None = None                  # None: the folder's mode
    method: str = "gradcam"                 # CAM method of the explained requests
    images: int = 64                        # images of the predict and evaluate paths (0 skips both)
    image_dir: str | None = None            # real images (searched recursively, first `images` sorted); else synthetic
    batch_size: int = 32                    # images per batch on the batch paths and the bare forward
    workers: int = streaming.DEFAULT_WORKERS  # DataLoader processes of the batch paths
    app: bool = True                        # time /predict of `python app.py` (this code and --inference eager)
    app_requests: int = 8                   # timed /predict calls per app, interleaved


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


def machine() -> dict:
    """Where the numbers come from, and how busy the machine was (1-minute load average)."""
    versions = {name: importlib.metadata.version(name) for name in ("torch", "onnxruntime")
                if _installed(name)}
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2), **versions}


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def bench_images(cfg: InferenceBenchConfig, folder: Path) -> list[Path]:
    """The batch paths' images: the first `cfg.images` of `cfg.image_dir`, else synthetic 600x450 JPEGs."""
    if cfg.image_dir is not None:
        found = find_images(Path(cfg.image_dir))[:cfg.images]
        if len(found) < cfg.images:
            raise ValueError(f"{cfg.image_dir}: {len(found)} images, {cfg.images} asked for")
        return found
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cfg.images):
        paths.append(folder / f"img_{i:04d}.jpg")
        paths[-1].write_bytes(synthetic_jpeg(i))
    return paths


def bare_forwards(predictors: dict[str, Predictor], folder: Path, stacked: torch.Tensor
                  ) -> dict[str, Callable[[], object]]:
    """Per variant, the model alone on `stacked` views: logits + features, input already in its memory format."""
    calls: dict[str, Callable[[], object]] = {}
    for name, predictor in predictors.items():
        if name == "onnxruntime":
            session = predictor_session(predictor, folder)
            calls[name] = lambda s=session: s.run(stacked)
            continue
        x = stacked.contiguous(memory_format=torch.channels_last if name == "channels_last" else torch.contiguous_format)

        def forward(p=predictor, x=x):
            with torch.inference_mode():
                feature_split.split_forward(p.loaded.model, x, p.taps)
        calls[name] = forward
    return calls


def predictor_session(predictor: Predictor, folder: Path):
    session, _ = open_onnx(folder, required=True, device=predictor.device,
                           weights_sha256=file_sha256(folder / MODEL_WEIGHTS_FILE))
    return session


def run(cfg: InferenceBenchConfig) -> dict:
    """Every variant's bare forward and every real path in one interleaved run; returns the JSON-able report."""
    if cfg.repeats < 1 or cfg.batch_size < 1:
        raise ValueError(f"repeats and batch_size must be at least 1, got {cfg.repeats} and {cfg.batch_size}")
    from ..evaluation.view_logits import collect_view_logits
    from ..inference.predict_folder import PredictConfig, predict_rows

    started = machine()
    folder = resolve_folder(cfg.model)
    chosen = Predictor.from_pretrained(folder, tta=cfg.tta)  # what every path runs: the variant auto picks
    mode = chosen.tta
    views = tta_views.get_views(mode)
    predictors: dict[str, Predictor] = {"eager": Predictor.from_pretrained(folder, tta=mode, variant="eager"),
                                        "channels_last": Predictor.from_pretrained(folder, tta=mode,
                                                                                   variant="channels_last")}
    if chosen.variant == "onnxruntime":
        predictors["onnxruntime"] = chosen
    size = chosen.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(cfg.batch_size, 3, size, size, generator=generator)
    one = torch.randn(1, 3, size, size, generator=generator)
    sides: dict[str, Callable[[], object]] = {}
    sides.update({f"bare_batch/{k}": v for k, v in bare_forwards(predictors, folder,
                                                                  tta_views.stack_views(batch, views)).items()})
    sides.update({f"bare_request/{k}": v for k, v in bare_forwards(predictors, folder,
                                                                    tta_views.stack_views(one, views)).items()})
    jpeg = synthetic_jpeg(0)
    sides["path/request"] = lambda: chosen.predict(jpeg)
    # The app's work in-process, per way to run it (the HTTP /predict is timed against the eager app below).
    for name, predictor in predictors.items():
        sides[f"explain/{name}"] = lambda p=predictor: p.explain(jpeg, method=cfg.method)
    if chosen.variant == "onnxruntime":
        whole_cam = Predictor.from_pretrained(folder, tta=mode, variant="onnxruntime")
        whole_cam._cam_from_map = False  # the TTA views in onnxruntime, the CAM's own forward in PyTorch
        sides["explain/onnxruntime views + whole-model CAM"] = lambda: whole_cam.explain(jpeg, method=cfg.method)
    x = chosen.preprocess(jpeg)[0].unsqueeze(0)
    view_logits, features = chosen.forward_views_with_features(x)

    def extras() -> None:
        # Exactly what predictions_from_logits adds on top of the softmax for one image.
        chosen.ood_scores(view_logits, features)
        found = chosen.nearest_cases(features)
        if found is not None:
            cases.retrieval_vote(found[0][:chosen.vote_k], chosen.label_names, prior=chosen.case_index.class_prior)

    sides["extras"] = extras
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        paths = bench_images(cfg, Path(tmp) / "images") if cfg.images > 0 else []
        if paths:
            root = Path(os.path.commonpath([str(p.parent) for p in paths]))
            predict_cfg = PredictConfig(model=str(folder), images=root, out=Path(tmp) / "unused.csv", tta=mode,
                                        batch_size=cfg.batch_size, workers=cfg.workers, progress=False)
            table = LesionTable(frame=pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                                                    "label": chosen.label_names[0], "group": None}),
                                layout="imagefolder", root=str(root))
            sides["path/predict"] = lambda: list(predict_rows(chosen, paths, root, predict_cfg))
            sides["path/evaluate"] = lambda: collect_view_logits(chosen, table, mode, batch_size=cfg.batch_size,
                                                                 workers=cfg.workers, progress=False)
        for _ in range(cfg.warmup):
            for fn in sides.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(cfg.repeats):
            for name, fn in sides.items():
                times[name].append(_seconds(fn))
        app = app_predict(cfg, folder, Path(tmp)) if cfg.app else None
    median = {name: statistics.median(values) for name, values in times.items()}
    n_views = len(views)
    batch_views = cfg.batch_size * n_views
    bare_batch = {k.split("/", 1)[1]: median[k] for k in median if k.startswith("bare_batch/")}
    bare_request = {k.split("/", 1)[1]: median[k] for k in median if k.startswith("bare_request/")}
    fastest = min(bare_batch, key=bare_batch.get)
    fastest_views_per_s = batch_views / bare_batch[fastest]
    fastest_request_s = min(bare_request.values())
    explain = {k.split("/", 1)[1]: median[k] for k in median if k.startswith("explain/")}
    paths_report: dict[str, dict] = {
        "request": {"median_ms": _ms(median["path/request"]),
                    "share_of_bare": round(fastest_request_s / median["path/request"], 3)},
    }
    for name in ("predict", "evaluate"):
        if f"path/{name}" in median:
            views_per_s = cfg.images * n_views / median[f"path/{name}"]
            paths_report[name] = {"images": cfg.images, "views_per_s": round(views_per_s, 1),
                                  "images_per_s": round(views_per_s / n_views, 2),
                                  "share_of_bare": round(views_per_s / fastest_views_per_s, 3)}
    if app is not None:
        app["share_of_bare"] = round(fastest_request_s / app["median_s"], 3)
        paths_report["app_predict"] = app
    explained = median[f"explain/{chosen.variant}"]
    return {
        "model": cfg.model, "architecture": chosen.loaded.architecture, "input_size": size, "tta": mode,
        "views": n_views, "method": cfg.method, "config": asdict(cfg),
        "image_source": "synthetic 600x450 JPEGs" if cfg.image_dir is None else cfg.image_dir,
        "machine": started, "load_average_1min_after": round(os.getloadavg()[0], 2),
        "variant": chosen.variant, "variant_note": chosen.variant_note,
        "bare_forward": {
            "batch_views": batch_views, "fastest": fastest,
            "views_per_s": {k: round(batch_views / v, 1) for k, v in bare_batch.items()},
            "over_fastest": {k: round(bare_batch[fastest] / v, 3) for k, v in bare_batch.items()},
            "request_ms": {k: _ms(v) for k, v in bare_request.items()},
        },
        "paths": paths_report,
        "request_variants": {"median_ms": {k: _ms(v) for k, v in explain.items()},
                             "over_eager": {k: round(v / explain["eager"], 3) for k, v in explain.items()}},
        "extras_over_request": (round(median["extras"] / explained, 4)
                                if chosen.ood_detector is not None or chosen.case_index is not None else None),
        "extras": {"ood_method": chosen.ood_detector.method if chosen.ood_detector else None,
                   "case_index_size": len(chosen.case_index) if chosen.case_index is not None else None},
        "variants": list(VARIANTS),
    }


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 1)


def app_predict(cfg: InferenceBenchConfig, folder: Path, tmp: Path) -> dict:
    """Median /predict over HTTP of `python app.py` on this code and on `--inference eager`, interleaved."""
    import httpx

    from .app import free_port, http_predict, start_app, stop, synthetic_dermoscopy, wait_until_serving

    image = synthetic_dermoscopy(tmp / "upload.png", width=BENCH_IMAGE_SIZE[0], height=BENCH_IMAGE_SIZE[1], seed=0)
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # the apps get this process's thread count
    apps: dict[str, tuple] = {}
    try:
        for variant in ("auto", "eager"):
            port = free_port()
            proc = start_app(["--model", str(folder), "--no-default-model", "--inference", variant], port=port,
                             env=env, log_path=tmp / f"app_{variant}.log")
            apps[variant] = (proc, f"http://127.0.0.1:{port}/")
        times: dict[str, list[float]] = {variant: [] for variant in apps}
        with httpx.Client(timeout=600.0) as http:
            for proc, url in apps.values():
                wait_until_serving(url, proc, 600.0)
            for round_ in range(cfg.warmup + cfg.app_requests):
                for variant, (_, url) in apps.items():
                    seconds = _seconds(lambda u=url: http_predict(http, u, image, method=cfg.method))
                    if round_ >= cfg.warmup:
                        times[variant].append(seconds)
    finally:
        for proc, _ in apps.values():
            stop(proc)
    now, before = statistics.median(times["auto"]), statistics.median(times["eager"])
    return {"median_s": round(now, 4), "median_s_eager": round(before, 4), "over_eager": round(now / before, 3),
            "requests": cfg.app_requests}
