"""Predictor: loading, preprocessing parity with evaluation, calibrated TTA predictions, explanations, bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.data.transforms import Preprocessing, eval_geometry, eval_transform
from skinlesion.hub import HubUnavailableError
from skinlesion.imageio import ImageLoadError, load_rgb
from skinlesion.inference.onnx_runtime import OnnxUnavailableError
from skinlesion.inference.overlay import input_box
from skinlesion.inference.predictor import Prediction, Predictor
from skinlesion.inference.tta import get_views
from skinlesion.models import create_model
from skinlesion.models.folder import ModelFolderError, save_model_folder

TINY_ARGS = {"widths": [8, 16, 16, 32], "hidden": 16}


def make_folder(root: Path, labels: list[str], extras: dict, seed: int = 0, name: str = "m") -> Path:
    torch.manual_seed(seed)
    model = create_model("lesion_cnn", len(labels), widths=tuple(TINY_ARGS["widths"]), hidden=16).eval()
    return save_model_folder(root / name, model, architecture="lesion_cnn", label_names=labels,
                             preprocessing=Preprocessing(input_size=64), model_args=TINY_ARGS, extras=extras)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def predictor(tiny_model_folder) -> Predictor:
    return Predictor.from_pretrained(tiny_model_folder)


# -- loading -----------------------------------------------------------------------------------------

def test_from_pretrained_exposes_the_folder(predictor):
    assert predictor.label_names == ["bkl", "mel", "nv"]
    assert predictor.preprocessing.input_size == 64
    assert predictor.tta == "flips"
    assert predictor.device == torch.device("cpu")
    assert predictor.backend == "torch"  # no model.onnx in the folder
    assert predictor.loaded.num_classes == 3


def test_tta_default_comes_from_the_folder_else_flips(tmp_path):
    assert Predictor.from_pretrained(make_folder(tmp_path, ["a", "b"], {"tta": "full"}, name="x")).tta == "full"
    assert Predictor.from_pretrained(make_folder(tmp_path, ["a", "b"], {}, name="y")).tta == "flips"
    assert Predictor.from_pretrained(tmp_path / "y", tta="none").tta == "none"
    with pytest.raises(ValueError, match="unknown TTA mode"):
        Predictor.from_pretrained(tmp_path / "y", tta="sideways")


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        Predictor.from_pretrained("nobody-here/no-such-skin-model-7f3a", revision="main")
    assert time.perf_counter() - start < 5.0


def test_use_onnx_true_without_file_is_an_error(tiny_model_folder):
    with pytest.raises(OnnxUnavailableError, match="export onnx"):
        Predictor.from_pretrained(tiny_model_folder, use_onnx=True)


def test_missing_config_is_a_clear_error(tiny_model_folder):
    (tiny_model_folder / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="no config.json"):
        Predictor.from_pretrained(tiny_model_folder)


def test_missing_weights_is_a_clear_error(tiny_model_folder):
    (tiny_model_folder / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="no model.safetensors"):
        Predictor.from_pretrained(tiny_model_folder)


def test_mismatched_weights_is_a_clear_error(tiny_model_folder):
    path = tiny_model_folder / "config.json"
    config = json.loads(path.read_text())
    config["model_args"]["widths"] = [8, 16, 16, 64]  # config no longer describes the saved weights
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="do not match"):
        Predictor.from_pretrained(tiny_model_folder)


def test_weights_for_another_class_count_are_refused(tiny_model_folder):
    path = tiny_model_folder / "config.json"
    config = json.loads(path.read_text())
    config.update(num_classes=4, label_names=["bkl", "mel", "nv", "df"])
    path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="do not match"):
        Predictor.from_pretrained(tiny_model_folder)


def test_import_skinlesion_is_light_and_predictor_is_lazy():
    code = ("import sys, skinlesion; assert 'torch' not in sys.modules, 'import skinlesion pulled in torch'; "
            "from skinlesion import Predictor; print(Predictor.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "skinlesion.inference.predictor"


# -- preprocessing and logits -------------------------------------------------------------------------

def test_preprocess_is_exactly_the_evaluation_transform(predictor):
    img = synthetic_lesion(3, size=(150, 100))
    x, model_input = predictor.preprocess(png_bytes(img))
    pre = predictor.preprocessing
    expected = eval_transform(pre)(load_rgb(png_bytes(img)))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, expected)
    assert model_input.size == (64, 64) and model_input.mode == "RGB"
    assert np.array_equal(np.asarray(model_input), eval_geometry(pre)(img).permute(1, 2, 0).numpy())


@pytest.mark.parametrize("mode", ["none", "flips", "full"])
def test_forward_views_is_one_batch_matching_per_view_calls(predictor, mode):
    views = get_views(mode)
    x = torch.stack([predictor.preprocess(synthetic_lesion(s))[0] for s in range(2)])
    logits = predictor.forward_views(x, mode)
    assert logits.shape == (len(views), 2, 3)
    with torch.no_grad():
        for v, view in enumerate(views):
            torch.testing.assert_close(logits[v], predictor.loaded.model(view.apply(x)), rtol=1e-4, atol=1e-5)


def test_forward_views_calls_the_model_once_for_all_views(predictor):
    # Logits and features come from one backbone pass (forward_features -> forward_head -> classifier),
    # so count the backbone's first block and the classifier: each runs once, on every view at once.
    model = predictor.loaded.model
    calls = []
    hooks = [module.register_forward_hook(lambda m, a, o, name=name: calls.append((name, a[0].shape[0])))
             for name, module in (("backbone", model.stages[0]), ("classifier", model.get_classifier()))]
    try:
        logits, feats = predictor.forward_views_with_features(torch.zeros(3, 3, 64, 64), "full")
    finally:
        for handle in hooks:
            handle.remove()
    assert calls == [("backbone", 8 * 3), ("classifier", 8 * 3)]
    assert logits.shape == (8, 3, 3) and feats.shape == (3, 16)


# -- predictions -------------------------------------------------------------------------------------

def test_predict_accepts_every_source_type(predictor, tmp_path):
    img = synthetic_lesion(1)
    path = tmp_path / "lesion.png"
    img.save(path)
    sources = [path, str(path), png_bytes(img), img, np.asarray(img)]
    preds = [predictor.predict(s) for s in sources]
    assert all(isinstance(p, Prediction) for p in preds)
    for p in preds[1:]:  # lossless PNG: every route sees the same pixels
        assert p.probs == pytest.approx(preds[0].probs, abs=1e-6)
    batch = predictor.predict(sources, batch_size=2)
    assert isinstance(batch, list) and len(batch) == len(sources)
    assert batch[0].probs == pytest.approx(preds[0].probs, abs=1e-5)
    assert predictor.predict([]) == []


def test_prediction_fields_are_consistent(predictor):
    pred = predictor.predict(synthetic_lesion(2), top_k=2)
    assert set(pred.probs) == {"bkl", "mel", "nv"}
    assert sum(pred.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == max(pred.probs, key=pred.probs.get)
    assert pred.confidence == pytest.approx(pred.probs[pred.label])
    assert pred.label_name == "Benign keratosis-like lesion" if pred.label == "bkl" else pred.label_name != pred.label
    assert [k for k, _ in pred.top_k] == sorted(pred.probs, key=pred.probs.get, reverse=True)[:2]
    assert pred.malignant_prob == pytest.approx(pred.probs["mel"])  # the only malignant class of the three
    assert len(pred.view_labels) == 4
    assert pred.agreement == pytest.approx(sum(v == pred.label for v in pred.view_labels) / 4)
    assert pred.model_input is not None and pred.model_input.size == (64, 64)
    assert pred.tta == "flips"


def test_probabilities_use_the_folder_temperature(tmp_path):
    hot = Predictor.from_pretrained(make_folder(tmp_path, ["bkl", "mel", "nv"], {"temperature": 3.0}, name="hot"))
    cold = Predictor.from_pretrained(make_folder(tmp_path, ["bkl", "mel", "nv"], {"temperature": 1.0}, name="cold"))
    img = synthetic_lesion(4)
    x = hot.preprocess(img)[0][None]
    expected = torch.softmax(hot.forward_views(x) / 3.0, dim=-1).mean(dim=0)[0]
    p_hot, p_cold = hot.predict(img), cold.predict(img)
    assert list(p_hot.probs.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert p_hot.label == p_cold.label                      # temperature never changes the ranking
    assert p_hot.confidence < p_cold.confidence             # ...only the confidence (flatter at T > 1)


def test_no_malignant_class_gives_none(tmp_path):
    predictor = Predictor.from_pretrained(make_folder(tmp_path, ["nv", "bkl", "df"], {}))
    assert predictor.predict(synthetic_lesion(0)).malignant_prob is None


def test_seven_class_folder_sums_all_malignant_classes(tmp_path):
    labels = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    pred = Predictor.from_pretrained(make_folder(tmp_path, labels, {})).predict(synthetic_lesion(0))
    assert pred.malignant_prob == pytest.approx(pred.probs["akiec"] + pred.probs["bcc"] + pred.probs["mel"])


def test_energy_threshold_alone_is_a_record_not_a_flag(tmp_path):
    # The energy threshold training and --fit-temperature write flagged none of 32 non-dermoscopic photos;
    # without fitted feature statistics (`skinlesion fit-features`) the check is reported unavailable instead.
    img = synthetic_lesion(5)
    for threshold, name in ((1e6, "h"), (-1e6, "l")):
        folder = make_folder(tmp_path, ["a", "b"], {"ood": {"score": "energy", "threshold": threshold}}, name=name)
        pred = Predictor.from_pretrained(folder).predict(img)
        assert pred.out_of_distribution is False and pred.ood_method is None and pred.ood_threshold is None
        assert pred.ood_score == pytest.approx(pred.energy_score)
    no_threshold = Predictor.from_pretrained(make_folder(tmp_path, ["a", "b"], {}, name="n")).predict(img)
    assert no_threshold.out_of_distribution is False  # nothing fitted: no claim either way
    assert no_threshold.ood_score == pytest.approx(pred.ood_score)


def test_uncertain_flag(tmp_path):
    img = synthetic_lesion(6)
    strict = make_folder(tmp_path, ["a", "b"], {"uncertain_below": 1.01}, name="s")
    lax = make_folder(tmp_path, ["a", "b"], {"uncertain_below": 0.0}, name="l")
    assert Predictor.from_pretrained(strict).predict(img).uncertain is True
    # A single view always agrees with itself, and no confidence is below 0: certain.
    assert Predictor.from_pretrained(lax, tta="none").predict(img).uncertain is False


def test_to_dict_is_json_and_drops_the_image(predictor):
    pred = predictor.predict(synthetic_lesion(7))
    data = json.loads(json.dumps(pred.to_dict()))
    assert "model_input" not in data
    assert data["label"] == pred.label and data["probs"] == pytest.approx(pred.probs)
    assert data["top_k"][0][0] == pred.label


# -- explanations ------------------------------------------------------------------------------------

def test_explain_returns_maps_at_the_original_resolution(predictor):
    img = synthetic_lesion(8, size=(150, 100))
    exp = predictor.explain(img)
    assert exp.heatmap.shape == (100, 150) and exp.heatmap.dtype == np.float32
    assert exp.heatmap.min() >= 0.0 and exp.heatmap.max() <= 1.0 and exp.heatmap.std() > 0
    assert exp.overlay.size == img.size
    assert exp.target_label == exp.prediction.label and exp.method == "gradcam"
    # The crop cut off columns at the left and right edges: the model never saw them, so no heat there.
    box = input_box(img.size, predictor.preprocessing)
    assert box.left > 1
    assert np.all(exp.heatmap[:, : int(box.left) - 1] == 0)
    assert np.array_equal(np.asarray(exp.overlay)[:, 0], np.asarray(img)[:, 0])  # untinted outside the crop


def test_explain_target_and_alpha(predictor):
    img = synthetic_lesion(9)
    exp_mel = predictor.explain(img, target="mel")
    assert exp_mel.target_label == "mel"
    with pytest.raises(ValueError, match=r"'melanoma'.*\['bkl', 'mel', 'nv'\]"):
        predictor.explain(img, target="melanoma")
    untinted = predictor.explain(img, target="mel", alpha=0.0)
    assert np.array_equal(np.asarray(untinted.overlay), np.asarray(img))
    assert not np.array_equal(np.asarray(exp_mel.overlay), np.asarray(img))
    with pytest.raises(ValueError, match="alpha"):
        predictor.explain(img, alpha=1.5)
    with pytest.raises(ValueError, match="unknown CAM method"):
        predictor.explain(img, method="magic")


def test_explain_is_consistent_with_predict(predictor):
    img = synthetic_lesion(10)
    assert predictor.explain(img, tta="full").prediction.probs == pytest.approx(
        predictor.predict(img, tta="full").probs, abs=1e-6)


def test_concurrent_predict_and_explain_match_sequential(predictor):
    images = [synthetic_lesion(s) for s in range(3)]
    ref_probs = [predictor.predict(i).probs for i in images]
    ref_maps = [predictor.explain(i).heatmap for i in images]
    errors, probs, maps = [], {}, {}

    def predict_loop():
        try:
            for _ in range(3):
                for k, img in enumerate(images):
                    probs[k] = predictor.predict(img).probs
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    def explain_loop():
        try:
            for k, img in enumerate(images):
                maps[k] = predictor.explain(img).heatmap
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=predict_loop), threading.Thread(target=explain_loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for k in range(3):
        assert probs[k] == pytest.approx(ref_probs[k], abs=1e-6)
        np.testing.assert_allclose(maps[k], ref_maps[k], atol=1e-5)


# -- bad input through the Predictor ------------------------------------------------------------------

def test_bad_inputs(predictor, tmp_path):
    with pytest.raises(ImageLoadError, match="not an image"):
        predictor.predict(b"GIF89a? no, just text")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        predictor.predict([synthetic_lesion(0), bad])
    tiny = predictor.predict(Image.new("RGB", (1, 1), (90, 50, 30)))
    assert tiny.model_input.size == (64, 64) and sum(tiny.probs.values()) == pytest.approx(1.0, abs=1e-5)
    rgba = predictor.predict(Image.new("RGBA", (80, 60), (90, 50, 30, 128)))
    assert rgba.model_input.mode == "RGB"
    gray16 = np.linspace(0, 65535, 80 * 60).astype(np.uint16).reshape(60, 80)
    assert np.asarray(predictor.predict(gray16).model_input).std() > 10  # not a flat white square
