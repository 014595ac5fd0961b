"""MODEL_ID on a Space: the Hub model it names is served (a revision pins it), else the shipped weights/.

No test reaches the real Hub. Hub models are served from a Hugging Face cache that the test lays
out itself (what a previous download leaves), and the Hub's refusals (no such repo, no such
revision, gated) come from a stand-in Hub on 127.0.0.1 answering with the real error codes.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import torch
from conftest import synthetic_lesion
from gradio_client import Client, handle_file
from test_app_client import lesion_file, serve

from skinlesion import app as logic
from skinlesion.data.transforms import Preprocessing
from skinlesion.models import create_model
from skinlesion.models.folder import save_model_folder

COMMIT_V1 = "1" * 40
COMMIT_MAIN = "2" * 40
FAST_S = 10.0


def model_folder(folder: Path, labels: list[str], seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("lesion_cnn", len(labels), widths=(8, 16, 16, 32), hidden=16).eval()
    return save_model_folder(folder, model, architecture="lesion_cnn", label_names=labels,
                             preprocessing=Preprocessing(input_size=64),
                             model_args={"widths": [8, 16, 16, 32], "hidden": 16}, extras={"tta": "none"})


def cache_snapshot(cache: Path, repo_id: str, commit: str, folder: Path, refs: tuple[str, ...]) -> None:
    """What `snapshot_download` leaves in the Hub cache: snapshots/<commit>/ files and refs/<name> -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An HF cache with me/derm at v1 (3 classes) and at main (4 other classes), and me/wrong holding no model."""
    cache = tmp_path / "hf_cache"
    cache_snapshot(cache, "me/derm", COMMIT_V1, model_folder(tmp_path / "v1", ["bkl", "mel", "nv"], 1), ("v1",))
    cache_snapshot(cache, "me/derm", COMMIT_MAIN, model_folder(tmp_path / "main", ["akiec", "bcc", "df", "vasc"], 2),
                   ("main",))
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("# a text model, not ours\n")
    cache_snapshot(cache, "me/wrong", COMMIT_MAIN, not_a_model, ("main",))
    # huggingface_hub reads HF_HUB_CACHE into its constants at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def loaded_registry(env_value: str | None, shipped: Path | None) -> logic.ModelRegistry:
    """What app.py's main does with MODEL_ID and the shipped folder."""
    sources = logic.model_sources([], env_value, shipped)
    registry = logic.ModelRegistry(sources.specs, notes=sources.notes)
    registry.load_all(warm_cam=False)
    return registry


# -- the Hub model named by MODEL_ID ------------------------------------------------------------------
def test_model_id_is_served_first_with_its_pinned_revision(hub_cache: Path, tiny_model_folder: Path):
    registry = loaded_registry("me/derm@v1", tiny_model_folder)
    assert registry.names == ["me/derm@v1", "shipped model"]  # the shipped folder stays as the fallback
    assert registry.default_name == "me/derm@v1"
    assert registry.get(None).label_names == ["bkl", "mel", "nv"]  # v1's files, not main's
    status = registry.status_markdown()
    assert status.startswith("**Serving me/derm@v1**: Hub model [`me/derm`](https://huggingface.co/me/derm) "
                             f"at revision `v1`, commit `{COMMIT_V1[:12]}` (from MODEL_ID).")
    assert "✓ **shipped model** — the shipped `tiny_model/` folder" in status
    assert "could not be loaded" not in status
    assert registry.serving_summary() == "Model: me/derm@v1 from the Hugging Face Hub"


def test_unpinned_model_id_serves_the_default_branch_and_names_its_commit(hub_cache: Path, tiny_model_folder: Path):
    registry = loaded_registry("me/derm", tiny_model_folder)
    assert registry.get(None).label_names == ["akiec", "bcc", "df", "vasc"]
    assert f"at the default branch (unpinned), commit `{COMMIT_MAIN[:12]}`" in registry.status_markdown()
    assert registry.serving_summary() == "Model: me/derm@main from the Hugging Face Hub"


def test_without_model_id_the_shipped_folder_is_served(tiny_model_folder: Path):
    registry = loaded_registry(None, tiny_model_folder)
    assert registry.default_name == "shipped model"
    assert registry.serving_markdown() == "**Serving shipped model**: the shipped `tiny_model/` folder of this app."
    assert registry.serving_summary() == "Model: shipped tiny_model/ folder"


# -- bad MODEL_ID: the app starts, serves weights/, and says what failed and why ----------------------
def wrong_files_folder(tmp_path: Path) -> str:
    folder = tmp_path / "downloaded_elsewhere"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "resnet18", "num_classes": 2, "label_names": ["a", "b"], '
                                        '"pretrained_cfg": {"input_size": [3, 64, 64]}}')
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    return str(folder)


@pytest.mark.parametrize(("model_id", "why"), [
    ("nobody/nothing", "HF_HUB_OFFLINE=1"),                        # not downloaded, and offline
    ("me/derm@v9", "not in the local cache and HF_HUB_OFFLINE=1"),  # a revision never downloaded
    ("me/wrong", "no config.json (is this a model folder?)"),       # a Hub repo that holds no model of ours
    ("wrong-files", "pickled .bin/.pth weights are never loaded"),  # a model folder with the wrong files
])
def test_bad_model_id_falls_back_to_the_shipped_folder_and_says_why(
        hub_cache: Path, tiny_model_folder: Path, tmp_path: Path, model_id: str, why: str):
    if model_id == "wrong-files":
        model_id = wrong_files_folder(tmp_path)
    start = time.perf_counter()
    registry = loaded_registry(model_id, tiny_model_folder)
    assert time.perf_counter() - start < FAST_S
    assert registry.default_name == "shipped model"
    status = registry.status_markdown()
    assert "**Serving shipped model**" in status
    assert "could not be loaded**, so this app serves its shipped `tiny_model/` folder instead" in status
    failed_line = next(line for line in status.splitlines() if line.startswith("- ✗"))
    assert why in failed_line
    assert registry.serving_summary() == ("Model: shipped tiny_model/ folder "
                                          "(1 requested model(s) failed to load, see why)")
    analysis = logic.analyze(registry, synthetic_lesion(1, size=(120, 90)))
    assert analysis.model_name == "shipped model" and set(analysis.prediction.probs) == {"bkl", "mel", "nv"}


def test_unreachable_hub_falls_back_fast(tiny_model_folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: connections are refused at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    registry = loaded_registry("nobody/nothing@v1", tiny_model_folder)
    assert time.perf_counter() - start < FAST_S
    assert registry.default_name == "shipped model"
    assert f"127.0.0.1:{port} is unreachable" in registry.status_markdown()


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every Hub API call with the refusal the real Hub gives for that repo (X-Error-Code header)."""

    REFUSALS = {"nobody/nothing": (404, "RepoNotFound"), "me/gated": (401, "GatedRepo"),
                "me/derm": (404, "RevisionNotFound")}

    def do_GET(self):  # noqa: N802 - http.server's name
        status, code = next((v for repo, v in self.REFUSALS.items() if f"/{repo}/" in self.path), (500, ""))
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", url)  # skinlesion.hub's reachability probe reads the environment
    # huggingface_hub reads both at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("model_id", "why"), [
    ("nobody/nothing", "Hub model `nobody/nothing` does not exist, or it is private"),
    ("me/derm@v9", "Hub model `me/derm` has no revision `v9`"),
    ("me/gated", "Hub model `me/gated` is gated"),
])
def test_hub_refusals_are_named_on_the_page(fake_hub: str, tiny_model_folder: Path, model_id: str, why: str,
                                            caplog: pytest.LogCaptureFixture):
    registry = loaded_registry(model_id, tiny_model_folder)
    assert registry.default_name == "shipped model"
    assert why in registry.status_markdown()
    assert "Traceback" not in caplog.text  # an expected refusal is a warning, not an error with a traceback


# -- the page -----------------------------------------------------------------------------------------
def test_page_names_the_model_and_the_failure_and_predict_uses_the_fallback(
        hub_cache: Path, tiny_model_folder: Path, tmp_path: Path):
    registry = loaded_registry("nobody/nothing@v1, me/derm@v1", tiny_model_folder)
    assert registry.default_name == "me/derm@v1"  # the first MODEL_ID entry failed: the next one serves
    with serve(registry) as url:
        page = httpx.get(url + "config", timeout=30).text
        assert "Model: me/derm@v1 from the Hugging Face Hub (1 requested model(s) failed to load, see why)" in page
        assert "✗ **nobody/nothing@v1**" in page and "HF_HUB_OFFLINE" in page
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        *_, details = client.predict(handle_file(str(lesion_file(tmp_path / "in", seed=3))), api_name="/predict")
        assert details["model"] == "me/derm@v1" and set(details["probs"]) == {"bkl", "mel", "nv"}
