"""The app served on 127.0.0.1 and called through gradio_client, as an API user would."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from conftest import synthetic_lesion
from gradio_client import Client, handle_file
from PIL import Image
from test_app_logic import write_bad_uploads

from skinlesion import app as logic
from skinlesion.bench.app import free_port, start_app, stop, wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_app_module() -> ModuleType:
    """app.py is a script at the repo root, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location("skinlesion_app_script", REPO_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def serve(registry: logic.ModelRegistry, examples_dir: Path | None = None, **build_kwargs) -> Iterator[str]:
    """build_demo + launch in this process on a free port, as app.py's main does; yields the URL."""
    app = load_app_module()
    demo = app.build_demo(registry, examples_dir, **build_kwargs)
    url = app.launch(demo, host="127.0.0.1", port=free_port(), block=False)
    try:
        yield url
    finally:
        demo.close()


def lesion_file(folder: Path, seed: int, label: int = 0, size: tuple[int, int] = (200, 150)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lesion_{seed}.png"
    synthetic_lesion(seed, size=size, label=label).save(path)
    return path


def confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


@pytest.fixture
def registry(tiny_model_folder: Path) -> logic.ModelRegistry:
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))])
    registry.load_all()
    return registry


def test_predict_with_only_the_image_returns_labels_and_overlay(registry: logic.ModelRegistry, tmp_path: Path):
    image = lesion_file(tmp_path / "in", seed=7, label=2)
    expected = registry.get("tiny_model").predict(image)
    with serve(registry) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert {"/predict", "/compare"} <= set(endpoints)
        assert [p["parameter_has_default"] for p in endpoints["/predict"]["parameters"]] == [False] + [True] * 5

        label, overlay, heatmap, model_input, summary, warnings, agreement, details = client.predict(
            handle_file(str(image)), api_name="/predict")

        assert label["label"] == logic.label_key(expected.label)
        assert confidences(label) == pytest.approx({logic.label_key(k): p for k, p in expected.top_k}, abs=1e-5)
        assert details["probs"] == pytest.approx(expected.probs, abs=1e-5)
        assert Image.open(overlay).size == (200, 150) and Image.open(heatmap).size == (200, 150)
        assert Image.open(model_input).size == (64, 64)
        assert expected.label_name in summary and "TTA agreement" in agreement
        assert ("Uncertain" in warnings) == expected.uncertain

        # Named arguments reach the callback: explain another class, without TTA.
        *_, details_nv = client.predict(handle_file(str(image)), target="nv", tta="none", api_name="/predict")
        assert details_nv["target_label"] == "nv" and details_nv["tta"] == "none"

        gallery, table = client.predict(handle_file(str(image)), api_name="/compare")
        assert [item["caption"].split(":")[0] for item in gallery] == ["input", "tiny_model"]
        assert "| tiny_model |" in table


def test_bad_uploads_raise_a_clear_error_and_the_next_request_works(registry: logic.ModelRegistry, tmp_path: Path):
    good = lesion_file(tmp_path / "in", seed=1)
    bad_files = write_bad_uploads(tmp_path / "bad")
    with serve(registry) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        for name, (path, phrase) in bad_files.items():
            with pytest.raises(Exception, match=phrase) as info:
                client.predict(handle_file(str(path)), api_name="/predict")
            assert type(info.value).__name__ == "AppError", name  # a gr.Error, not a crash
            assert str(path) not in str(info.value)
            label, overlay, *_ = client.predict(handle_file(str(good)), api_name="/predict")
            assert label["label"] and Path(overlay).is_file(), f"no answer after {name}"


def test_app_without_models_starts_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources = logic.model_sources(["nobody/nothing@v1"], None, tmp_path / "weights")  # weights/ absent
    registry = logic.ModelRegistry(sources.specs, notes=sources.notes)
    registry.load_all()
    with serve(registry) as url:
        page_config = httpx.get(url + "config", timeout=30).text
        assert "No model is available" in page_config
        assert "nobody/nothing" in page_config and "HF_HUB_OFFLINE" in page_config
        assert "No shipped model yet" in page_config
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        with pytest.raises(Exception, match="No model is available"):
            client.predict(handle_file(str(lesion_file(tmp_path / "in", seed=2))), api_name="/predict")


@pytest.mark.slow
def test_app_py_cli_serves_model_id_and_examples(tiny_model_folder: Path, tmp_path: Path):
    """`python app.py` as a subprocess: --model / MODEL_ID / --examples / --no-default-model wiring."""
    examples = tmp_path / "examples"
    lesion_file(examples, seed=3)
    port = free_port()
    proc = start_app(["--no-default-model", "--examples", str(examples), "--concurrency", "1"], port=port,
                     env={"MODEL_ID": f"{tiny_model_folder}, nobody/nothing@main", "HF_HUB_OFFLINE": "1"},
                     log_path=tmp_path / "app.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, proc, timeout=300)
        config = httpx.get(url + "config", timeout=30).json()
        text = str(config)
        assert "✓ **tiny_model**" in text and "✗ **nobody/nothing@main**" in text
        assert "lesion_3.png" in text  # the examples panel exists
        assert "shipped model" not in text
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        label, overlay, *_ = client.predict(handle_file(str(examples / "lesion_3.png")), api_name="/predict")
        assert label["label"] and Path(overlay).is_file()
    finally:
        stop(proc)
    assert proc.returncode is not None
    assert "Traceback" not in (tmp_path / "app.log").read_text(errors="replace"), "startup logged a traceback"


def test_examples_panel_hidden_without_examples(registry: logic.ModelRegistry, tmp_path: Path):
    examples = tmp_path / "examples"
    lesion_file(examples, seed=4)
    with serve(registry) as url:
        assert "Examples" not in str(httpx.get(url + "config", timeout=30).json()["components"])
    with serve(registry, examples) as url:
        assert "lesion_4.png" in str(httpx.get(url + "config", timeout=30).json()["components"])



def test_cli_refuses_a_missing_examples_folder(tmp_path: Path, capsys: pytest.CaptureFixture):
    app = load_app_module()
    with pytest.raises(SystemExit) as info:
        app.main(["--no-default-model", "--examples", str(tmp_path / "absent")])
    assert info.value.code == 2
    assert "no such folder" in capsys.readouterr().err
