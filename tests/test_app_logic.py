"""The app's callbacks without a server: model sources, the registry, formatting and error mapping."""

from __future__ import annotations

import io
import re
import struct
import threading
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import synthetic_lesion
from PIL import Image

from skinlesion import app as logic
from skinlesion.inference.predictor import Prediction


# -- files a user might upload ------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid all-black grayscale PNG of width x height, streamed (a few hundred KB, never 400 MB in memory)."""
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def write_bad_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a regex the error message must match)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.jpg"
    text.write_text("this is a text file renamed to .jpg\n")
    buffer = io.BytesIO()
    synthetic_lesion(3, size=(200, 150)).save(buffer, "JPEG", quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    tiny = folder / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 150, 120)).save(tiny)
    return {
        "text renamed .jpg": (text, "not an image file"),
        "truncated jpeg": (truncated, "truncated"),
        # PIL's own bomb guard (2x its limit) or load_rgb's 64 MP limit, whichever looks first
        "20000x20000 png": (write_huge_png(folder / "huge.png"), "decompression bomb|megapixels"),
        "1x1 image": (tiny, "1x1 pixels"),
    }


def make_prediction(**overrides) -> Prediction:
    fields = dict(label="mel", label_name="Melanoma", confidence=0.7, probs={"bkl": 0.1, "mel": 0.7, "nv": 0.2},
                  top_k=[("mel", 0.7), ("nv", 0.2), ("bkl", 0.1)], malignant_prob=0.7, agreement=1.0,
                  view_labels=["mel", "mel", "mel", "mel"], ood_score=3.0, out_of_distribution=False,
                  uncertain=False, tta="flips")
    fields.update(overrides)
    return Prediction(**fields)


@pytest.fixture
def registry(tiny_model_folder: Path) -> logic.ModelRegistry:
    return logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))])


# -- model sources ------------------------------------------------------------------------------------
def test_parse_model_spec_pins_hub_revision_but_keeps_local_paths_with_at(tmp_path: Path):
    assert logic.parse_model_spec("owner/derm@v1.2") == logic.ModelSpec("owner/derm", "v1.2")
    assert logic.parse_model_spec(" owner/derm ") == logic.ModelSpec("owner/derm", None)
    odd = tmp_path / "model@2024"
    odd.mkdir()
    assert logic.parse_model_spec(str(odd)) == logic.ModelSpec(str(odd), None)


def test_model_sources_order_notes_and_unique_names(tmp_path: Path, tiny_model_folder: Path):
    empty = tmp_path / "weights"
    empty.mkdir()
    sources = logic.model_sources([str(tiny_model_folder), str(tiny_model_folder)], "a/b@rev1, c/d", empty)
    assert [(s.source, s.revision) for s in sources.specs] == [
        (str(tiny_model_folder), None), ("a/b", "rev1"), ("c/d", None)]  # the repeated folder is served once
    assert [s.name for s in sources.specs] == ["tiny_model", "a/b@rev1", "c/d"]
    assert len(sources.notes) == 1 and "weights/" in sources.notes[0]

    shipped = logic.model_sources([], None, tiny_model_folder)
    assert [s.name for s in shipped.specs] == ["shipped model"] and not shipped.notes

    other = tmp_path / "elsewhere" / "tiny_model"
    other.mkdir(parents=True)
    clash = logic.model_sources([str(tiny_model_folder), str(other)], None, None)
    assert [s.name for s in clash.specs] == ["tiny_model", "tiny_model (2)"]


# -- the registry -------------------------------------------------------------------------------------
def test_registry_loads_each_model_once_and_shares_it(tiny_model_folder: Path):
    calls = []

    def counting_loader(spec):
        calls.append(spec.source)
        return logic.load_predictor(spec)

    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder))], loader=counting_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.get("tiny_model"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get("tiny_model") is results[0]
    assert all(r is results[0] for r in results)
    assert calls == [str(tiny_model_folder)]
    assert registry.is_loaded("tiny_model")


def test_registry_reports_a_failed_model_and_keeps_the_good_one(tmp_path: Path, tiny_model_folder: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder)), logic.ModelSpec("nobody/nothing", "v9"),
                                    logic.ModelSpec(str(tmp_path / "missing"))])
    registry.load_all(warm_cam=False)
    assert registry.available_names == ["tiny_model"]
    assert registry.default_name == "tiny_model"
    status = registry.status_markdown()
    assert "✓ **tiny_model**" in status
    assert "✗ **nobody/nothing@v9**" in status and "HF_HUB_OFFLINE" in status
    assert "✗ **missing**" in status and "no such model folder" in status
    with pytest.raises(logic.ModelUnavailableError, match="nobody/nothing"):
        registry.get("nobody/nothing@v9")


def test_empty_registry_says_no_model_and_refuses_predictions():
    registry = logic.ModelRegistry([], notes=["No shipped model yet"])
    assert registry.default_name is None
    assert "No model is available" in registry.status_markdown()
    with pytest.raises(gr.Error, match="No model is available"):
        logic.analyze(registry, synthetic_lesion(0))


# -- the class dropdown follows the model ------------------------------------------------------------
def test_class_choices_follow_the_models_labels(registry: logic.ModelRegistry):
    view = logic.model_changed(registry, "tiny_model")
    assert [value for _, value in view.target_choices] == [logic.PREDICTED, "bkl", "mel", "nv"]
    assert ("Melanoma (mel)", "mel") in view.target_choices
    assert "Melanocytic nevus" in view.class_notes and "malignant" in view.class_notes
    assert "Basal cell" not in view.class_notes  # only this model's classes


# -- formatting ---------------------------------------------------------------------------------------
def test_label_data_uses_full_names_and_keeps_probabilities():
    data = logic.label_data(make_prediction())
    assert data == {"Benign keratosis-like lesion (bkl)": 0.1, "Melanoma (mel)": 0.7, "Melanocytic nevus (nv)": 0.2}
    assert logic.label_key("atypical_nevus") == "Atypical nevus (atypical_nevus)"


def test_warnings_only_when_uncertain_or_out_of_distribution():
    assert logic.warnings_markdown(make_prediction()) == ""
    uncertain = logic.warnings_markdown(make_prediction(uncertain=True, confidence=0.41, agreement=0.5))
    assert "Uncertain" in uncertain and "41.0%" in uncertain and "dermoscopic" not in uncertain
    ood = logic.warnings_markdown(make_prediction(out_of_distribution=True, ood_score=-2.5))
    assert "does not look like the dermoscopic images" in ood and "-2.50" in ood and "thumbnail" not in ood
    refused = make_prediction(out_of_distribution=True, ood_score=-2.5)
    assert "only 90x60 pixels" in logic.warnings_markdown(refused, (90, 60))   # small: the size may be the cause
    assert "pixels" not in logic.warnings_markdown(refused, (600, 450))
    assert logic.warnings_markdown(make_prediction(), (90, 60)) == ""          # a small image that passes: no warning


def test_summary_and_agreement_markdown():
    pred = make_prediction(view_labels=["mel", "nv", "mel", "mel"], agreement=0.75)
    summary = logic.summary_markdown(pred, model_name="m", target_label="nv", method="gradcam")
    assert "Melanoma (`mel`) — 70.0%" in summary and "malignancy" in summary and "Melanocytic nevus (nv)" in summary
    assert "no malignant class" in logic.summary_markdown(make_prediction(malignant_prob=None), model_name="m",
                                                          target_label="mel", method="gradcam")
    agreement = logic.agreement_markdown(pred)
    assert "3/4 views" in agreement
    assert "| hflip | ✗ Melanocytic nevus (nv) |" in agreement


def test_display_size_caps_the_long_side_and_never_upscales():
    assert logic.display_size(Image.new("RGB", (3000, 2000))).size == (1024, 683)
    small = Image.new("RGB", (600, 450))
    assert logic.display_size(small) is small


# -- uploads and error mapping ------------------------------------------------------------------------
def test_decode_upload_accepts_gradio_payloads(tmp_path: Path):
    path = tmp_path / "lesion.png"
    synthetic_lesion(1, size=(120, 90)).save(path)
    from_dict = logic.decode_upload({"path": str(path), "orig_name": "lesion.png", "url": None})
    assert from_dict.size == (120, 90) and from_dict.mode == "RGB"
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    assert np.array_equal(np.asarray(logic.decode_upload({"url": data_url, "path": None})), np.asarray(from_dict))


def test_bad_uploads_raise_gr_error_naming_the_users_file(tmp_path: Path):
    with pytest.raises(gr.Error, match="Upload a dermoscopic image first"):
        logic.decode_upload(None)
    for name, (path, phrase) in write_bad_uploads(tmp_path / "bad").items():
        payload = {"path": str(path), "orig_name": f"my {path.name}", "url": None}
        with pytest.raises(gr.Error) as info:
            logic.decode_upload(payload)
        message = info.value.message
        assert re.search(phrase, message), (name, message)
        assert str(path) not in message, f"{name}: the server-side path leaked: {message}"


def test_invalid_controls_raise_gr_error(registry: logic.ModelRegistry):
    image = synthetic_lesion(0)
    with pytest.raises(gr.Error, match="no class 'bcc'"):
        logic.analyze(registry, image, "tiny_model", target="bcc")
    with pytest.raises(gr.Error, match="Unknown CAM method"):
        logic.analyze(registry, image, "tiny_model", method="magic")
    with pytest.raises(gr.Error, match="Unknown TTA mode"):
        logic.analyze(registry, image, "tiny_model", tta="sideways")
    with pytest.raises(gr.Error, match="between 0 and 1"):
        logic.analyze(registry, image, "tiny_model", alpha=1.5)
    with pytest.raises(gr.Error, match="Unknown model"):
        logic.analyze(registry, image, "not-served")


# -- the callbacks end to end (library underneath, no server) ---------------------------------------
def test_analyze_matches_the_library_and_returns_every_panel(registry: logic.ModelRegistry):
    image = synthetic_lesion(5, size=(160, 120), label=1)
    result = logic.analyze(registry, image, "tiny_model", target="nv", tta="none", alpha=0.3)
    direct = registry.get("tiny_model").predict(image, tta="none")
    assert result.prediction.probs == pytest.approx(direct.probs, abs=1e-6)
    assert result.label == pytest.approx({logic.label_key(k): v for k, v in direct.probs.items()}, abs=1e-6)
    assert result.explanation.target_label == "nv" and result.details["target_label"] == "nv"
    assert result.overlay.size == image.size and result.heatmap.size == image.size
    assert result.model_input.size == (64, 64)
    assert result.prediction.tta == "none" and "1/1 views" in result.agreement


def test_compare_explains_each_model_and_falls_back_to_its_prediction(tiny_model_folder: Path, tmp_path: Path):
    import shutil

    other = tmp_path / "copy" / "second"
    shutil.copytree(tiny_model_folder, other)
    registry = logic.ModelRegistry([logic.ModelSpec(str(tiny_model_folder)), logic.ModelSpec(str(other))])
    gallery, table = logic.compare(registry, synthetic_lesion(2, size=(100, 80)), None, target="mel")
    assert [caption.split(":")[0] for _, caption in gallery] == ["input", "tiny_model", "second"]
    assert all(img.size == (100, 80) for img, _ in gallery)
    assert table.count("| Melanoma (mel) |") == 2  # both maps explain the requested class
    with pytest.raises(gr.Error, match="at most"):
        logic.compare(registry, synthetic_lesion(2), ["tiny_model"] * (logic.MAX_COMPARE_MODELS + 1))


def test_example_images_lists_only_images(tmp_path: Path):
    assert logic.example_images(None) == []
    (tmp_path / "sub").mkdir()
    synthetic_lesion(0).save(tmp_path / "sub" / "b.png")
    synthetic_lesion(1).save(tmp_path / "a.png")
    (tmp_path / "readme.txt").write_text("not an image")
    assert [p.name for p in logic.example_images(tmp_path)] == ["a.png", "b.png"]
    with pytest.raises(FileNotFoundError):
        logic.example_images(tmp_path / "absent")


def test_examples_dataset_offline_is_a_clear_hub_error(monkeypatch: pytest.MonkeyPatch):
    from skinlesion.hub import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="nobody/derm-examples"):
        logic.examples_from_hub("nobody/derm-examples@v1")
