"""16 concurrent gradio_client users: each gets the answer for its own image, and the server survives."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_lesion
from gradio_client import Client, handle_file
from test_app_client import serve

from skinlesion import app as logic
from skinlesion.models.folder import load_model_folder, save_model_folder

N_CLIENTS = 16
TOLERANCE = 1e-5


@pytest.fixture
def sharp_model_folder(tiny_model_folder: Path, tmp_path: Path) -> Path:
    """The tiny model with its two linear layers scaled x10: same code path, but the untrained model's
    near-constant probabilities now differ clearly from image to image (so a mixed-up answer shows)."""
    loaded = load_model_folder(tiny_model_folder)
    with torch.no_grad():
        loaded.model.fc1.weight.mul_(10.0)
        loaded.model.fc.weight.mul_(10.0)
    return save_model_folder(tmp_path / "sharp_model", loaded.model, architecture=loaded.architecture,
                             label_names=loaded.label_names, preprocessing=loaded.preprocessing,
                             model_args={"widths": [8, 16, 16, 32], "hidden": 16}, extras=loaded.extras)


def test_sixteen_concurrent_clients_each_get_their_own_answer(sharp_model_folder: Path, tmp_path: Path):
    registry = logic.ModelRegistry([logic.ModelSpec(str(sharp_model_folder))])
    registry.load_all()
    predictor = registry.get(registry.default_name)
    images = []
    for i in range(N_CLIENTS):
        path = tmp_path / "in" / f"lesion_{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        synthetic_lesion(100 + i, size=(160 + 8 * i, 120 + 6 * i), label=i % 7).save(path)
        images.append(path)
    expected = [predictor.predict(path).probs for path in images]
    vectors = [np.array(list(p.values())) for p in expected]
    closest = min(np.abs(a - b).max() for a, b in itertools.combinations(vectors, 2))
    assert closest > 100 * TOLERANCE, "test images are too alike to tell answers apart"

    results: dict[int, dict] = {}
    errors: dict[int, BaseException] = {}
    start_line = threading.Barrier(N_CLIENTS)

    def user(i: int, url: str) -> None:
        try:
            client = Client(url, verbose=False, download_files=str(tmp_path / f"dl_{i}"))
            start_line.wait(timeout=120)  # every request in flight at once
            *_, details = client.predict(handle_file(str(images[i])), api_name="/predict")
            results[i] = details
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors[i] = err

    with serve(registry, concurrency_limit=2, max_queue=64) as url:
        began = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i, url)) for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        elapsed = time.perf_counter() - began
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not errors, {i: repr(e) for i, e in errors.items()}
        assert sorted(results) == list(range(N_CLIENTS))
        for i, details in results.items():
            assert details["probs"] == pytest.approx(expected[i], abs=TOLERANCE), f"client {i} got another answer"

        # Still serving afterwards.
        after = Client(url, verbose=False, download_files=str(tmp_path / "dl_after"))
        *_, details = after.predict(handle_file(str(images[0])), api_name="/predict")
        assert details["probs"] == pytest.approx(expected[0], abs=TOLERANCE)
    print(f"{N_CLIENTS} concurrent requests answered in {elapsed:.1f} s")


@pytest.mark.slow
def test_bench_app_reports_cold_start_and_overhead(tiny_model_folder: Path):
    from skinlesion.bench.app import BenchConfig, run

    result = run(BenchConfig(model=str(tiny_model_folder), requests=2, warmup=1, width=200, height=150, threads=1))
    assert 0 < result["server_ready_s"] <= result["cold_start_s"]
    for key in ("app_http_s", "app_client_s", "library_explain_s", "library_predict_explain_s"):
        assert result[key] > 0, key
    assert result["ui_overhead"] == pytest.approx(result["app_http_s"] / result["library_predict_explain_s"], rel=0.01)
    assert result["server_callback_ms"] > 0 and result["server_overhead_ms"] >= 0
    assert len(result["all_s"]["app_http"]) == 2
