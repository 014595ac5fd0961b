"""The app's speed (`skinlesion bench app --model M`, or `--space` for a Space's cold start and memory).

Measures, in one run so the shared machine's load hits both sides alike:
- cold start: `python app.py` launched as a subprocess until its first /predict answer (polled with
  gradio_client), plus when the server first answered HTTP;
- per-request latency of /predict through the app against the bare library call on the same file in
  this process: `Predictor.explain`, which is the library work the app does (it includes the
  prediction), and `predict` + `explain` for reference. The app is timed two ways:
  `app_http_s`, the browser's path (upload, queue join, server-sent events, download of the three
  output images) over plain HTTP, and `app_client_s`, gradio_client, which adds its own latency
  (it polls its message queue every 50 ms).
Ratios (goal <= 1.15): `ui_overhead` = median `app_http_s` / median (`predict` + `explain`), the
issue's definition; `ui_overhead_same_work` divides by `explain` alone, the model work the app
really does, so it is the stricter one; `ui_overhead_gradio_client` is the strict one for gradio_client.
The server's own trace (GRADIO_PROFILING) separates Gradio's part: `server_callback_ms` (our
callback: decode, explain, formatting) and `server_overhead_ms` (queue, pre/post-processing, writing
the output images). On a loaded machine, two torch threads per process make the library timings
swing by 10x (a preempted OpenMP worker stalls the other at every barrier): `--threads 1` gives both
processes one thread and steadier ratios. Prints JSON.

`--space` measures instead what a Hugging Face Space's CPU hardware (2 vCPU) would see: `python app.py`
started exactly as a Space starts it (no arguments; GRADIO_SERVER_NAME/PORT in the environment; the
shipped weights/, or `--model` as the MODEL_ID variable), torch's default threads, and reports the cold
start (process start to the first answered /predict) and the app process's resident memory after
`--requests` (default 20) /predict calls, against the goals (<= 20 s, <= 1.5 GB).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/skinlesion/bench/app.py -> the checkout
APP_FILE = REPO_ROOT / "app.py"


@dataclass(frozen=True)
class BenchConfig:
    model: str                              # model folder or Hub id, as `app.py --model` takes it
    requests: int = 10                      # timed requests per side
    warmup: int = 2                         # untimed requests per side first
    width: int = 600                        # HAM10000 images are 600x450
    height: int = 450
    method: str = "gradcam"
    startup_timeout: float = 600.0          # seconds for app.py to answer its first request
    settle_s: float = 0.0                   # untimed pause before each timed call
    threads: int | None = None              # torch threads in both processes (None: torch's default)
    seed: int = 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_dermoscopy(path: Path, *, width: int, height: int, seed: int) -> Path:
    """A skin-toned image with a dark, noisy ellipse: stands in for a dermoscopic photo (no data shipped)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.15, 0.3), height * rng.uniform(0.15, 0.3)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    img = np.empty((height, width, 3), dtype=np.float64)
    img[...] = (215, 165, 145)
    img[inside] = rng.uniform(20, 120, size=3)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def start_app(args: list[str], *, port: int, env: dict[str, str] | None = None,
              log_path: Path | None = None) -> subprocess.Popen:
    """`python app.py ARGS --host 127.0.0.1 --port PORT` with analytics and the Hub off; output to `log_path`."""
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
                "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
    out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(APP_FILE), *args, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def wait_until_serving(url: str, proc: subprocess.Popen | None, timeout: float) -> float:
    """Poll `url` until it answers HTTP 200; returns the time it took. Fails fast if `proc` died."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_predict(http, url: str, image: Path, *, method: str = "gradcam") -> list[Any]:
    """/predict as the browser does it: upload, join the queue, read the SSE result, fetch the images."""
    with image.open("rb") as f:
        uploaded = http.post(url + "gradio_api/upload", files={"files": (image.name, f, "image/png")})
    uploaded.raise_for_status()
    file_data = {"path": uploaded.json()[0], "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
    # None model: the app's default model; the rest are the page's defaults.
    call = http.post(url + "gradio_api/call/predict", json={"data": [file_data, None, method, "predicted", "default", 0.5]})
    call.raise_for_status()
    event_id = call.json()["event_id"]
    event, outputs = None, None
    with http.stream("GET", url + f"gradio_api/call/predict/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                outputs = json.loads(line.split(":", 1)[1])
                break
    if event != "complete" or not isinstance(outputs, list):
        raise RuntimeError(f"/predict failed: {event} {outputs}")
    for item in outputs:
        if isinstance(item, dict) and item.get("url"):
            http.get(item["url"]).raise_for_status()
    return outputs


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(cfg: BenchConfig) -> dict[str, Any]:
    import httpx
    import torch
    from gradio_client import Client, handle_file

    from ..inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        image = synthetic_dermoscopy(Path(tmp) / "lesion.png", width=cfg.width, height=cfg.height, seed=cfg.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {"GRADIO_PROFILING": "1"}
        threads_before = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)  # restored below: callers (tests) keep their setting
            env["OMP_NUM_THREADS"] = str(cfg.threads)
        launched = time.perf_counter()
        proc = start_app(["--model", cfg.model, "--no-default-model"], port=port, log_path=Path(tmp) / "app.log",
                         env=env)
        try:
            server_ready = wait_until_serving(url, proc, cfg.startup_timeout)
            client = Client(url, verbose=False, download_files=str(Path(tmp) / "downloads"))
            client.predict(handle_file(str(image)), api_name="/predict")
            cold_start = time.perf_counter() - launched

            predictor = Predictor.from_pretrained(cfg.model)
            http = httpx.Client(timeout=cfg.startup_timeout)

            def through_http():
                http_predict(http, url, image, method=cfg.method)

            def through_client():
                client.predict(handle_file(str(image)), method=cfg.method, api_name="/predict")

            def bare_explain():
                predictor.explain(image, method=cfg.method)

            def bare_predict_explain():
                predictor.predict(image)
                predictor.explain(image, method=cfg.method)

            sides = {"app_http": through_http, "app_client": through_client, "library_explain": bare_explain,
                     "library_predict_explain": bare_predict_explain}
            for _ in range(cfg.warmup):
                for fn in sides.values():
                    fn()
            times: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(cfg.requests):  # interleaved: load spikes on the shared machine hit every side
                for name, fn in sides.items():
                    # Let the previous side's stragglers (server clean-up, client threads) finish first.
                    time.sleep(cfg.settle_s)
                    times[name].append(_timed(fn))
            traces = [t for t in http.get(url + "gradio_api/profiling/traces").json() if t.get("fn_name") == "predict"]
            http.close()
        finally:
            stop(proc)
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(threads_before)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "config": asdict(cfg),
        "backend": predictor.backend,
        "tta": predictor.tta,
        "torch_threads": torch_threads,
        "cold_start_s": round(cold_start, 3),
        "server_ready_s": round(server_ready, 3),
        "app_http_s": round(median["app_http"], 4),
        "app_client_s": round(median["app_client"], 4),
        "library_explain_s": round(median["library_explain"], 4),
        "library_predict_explain_s": round(median["library_predict_explain"], 4),
        "ui_overhead": round(median["app_http"] / median["library_predict_explain"], 3),
        "ui_overhead_same_work": round(median["app_http"] / median["library_explain"], 3),
        "ui_overhead_gradio_client": round(median["app_client"] / median["library_explain"], 3),
        "server_callback_ms": round(statistics.median(t["fn_call_ms"] for t in traces), 1),
        "server_overhead_ms": round(statistics.median(t["total_ms"] - t["fn_call_ms"] for t in traces), 1),
        "all_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }


# -- as a Space runs it ---------------------------------------------------------------------------------
SPACE_GOALS = {"cold_start_s": 20.0, "rss_mb": 1536.0}  # issue 13: a CPU Space (2 vCPU, 16 GB) must stay well inside


@dataclass(frozen=True)
class SpaceBenchConfig:
    requests: int = 20                      # /predict calls before the resident memory is read
    width: int = 600                        # HAM10000 images are 600x450
    height: int = 450
    model_id: str | None = None             # the Space variable MODEL_ID (None: the shipped weights/ only)
    method: str = "gradcam"                 # CAM method of each /predict
    startup_timeout: float = 600.0
    seed: int = 0


def process_memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of `pid` now (VmRSS) and at its peak (VmHWM), in MB, from /proc (Linux, as on a Space)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        raise RuntimeError(f"no {status}: resident memory is read from Linux's /proc (process gone, or not Linux)")
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: round(int(fields[name].split()[0]) / 1024, 1) for key, name in (("rss_mb", "VmRSS"),
                                                                               ("peak_rss_mb", "VmHWM"))}


def start_space_app(*, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python app.py` with no arguments, the way a Space starts it (server address from the environment)."""
    full_env = {k: v for k, v in os.environ.items() if k != "MODEL_ID"}
    full_env.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                     "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **env})
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(APP_FILE)], cwd=REPO_ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)


def served_architecture(model_id: str | None) -> str:
    """What the measured app serves by default: the MODEL_ID model, else weights/config.json's architecture."""
    if model_id:
        return f"MODEL_ID={model_id}"
    config = REPO_ROOT / "weights" / "config.json"
    return json.loads(config.read_text())["architecture"] if config.is_file() else "no shipped model"


def run_space(cfg: SpaceBenchConfig) -> dict[str, Any]:
    import importlib.metadata
    import platform

    import httpx
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="bench_space_") as tmp:
        image = synthetic_dermoscopy(Path(tmp) / "lesion.png", width=cfg.width, height=cfg.height, seed=cfg.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {"MODEL_ID": cfg.model_id} if cfg.model_id else {}
        log_path = Path(tmp) / "app.log"
        launched = time.perf_counter()
        proc = start_space_app(port=port, env=env, log_path=log_path)
        try:
            server_ready = wait_until_serving(url, proc, cfg.startup_timeout)
            client = Client(url, verbose=False, download_files=str(Path(tmp) / "downloads"))
            client.predict(handle_file(str(image)), api_name="/predict")
            cold_start = time.perf_counter() - launched
            after_first = process_memory_mb(proc.pid)
            latencies = []
            with httpx.Client(timeout=cfg.startup_timeout) as http:
                for _ in range(cfg.requests):
                    latencies.append(_timed(lambda: http_predict(http, url, image, method=cfg.method)))
            memory = process_memory_mb(proc.pid)
        except Exception as err:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"measuring the app as a Space failed ({err}); app.py's log ends with:\n{tail}") from err
        finally:
            stop(proc)
    rss_ok = memory["rss_mb"] <= SPACE_GOALS["rss_mb"]
    return {
        "config": asdict(cfg),
        "serves": served_architecture(cfg.model_id),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": importlib.metadata.version("torch")},
        "cold_start_s": round(cold_start, 2),
        "server_ready_s": round(server_ready, 2),
        "rss_mb_after_first_request": after_first["rss_mb"],
        "rss_mb": memory["rss_mb"],
        "peak_rss_mb": memory["peak_rss_mb"],
        "requests": cfg.requests,
        "median_request_s": round(statistics.median(latencies), 3) if latencies else None,
        "goals": SPACE_GOALS,
        "within_goals": cold_start <= SPACE_GOALS["cold_start_s"] and rss_ok,
    }
