"""Every inference variant answers as eager fp32 does: probabilities within 1e-4, the same OOD scores and
flags, the same similar cases, the same CAM; on synthetic images always, and on real dermoscopy with the
shipped model when ../shared/data is present. The variant is chosen once at load, and a model.onnx that
does not serve the folder is passed over for PyTorch, saying why."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_lesion
from fitted_folder import make_fitted, non_lesion_images

from skinlesion.evaluation.view_logits import collect_view_logits
from skinlesion.inference.onnx_export import export_onnx
from skinlesion.inference.predict_folder import PredictConfig
from skinlesion.inference.predict_folder import run as predict_folder
from skinlesion.inference.predictor import Predictor
from skinlesion.inference.variants import VARIANTS
from skinlesion.models.folder import ModelFolderError

TAPS = ("stages.2", "stages.3")
PROB_ATOL = 1e-4
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A fitted folder whose OOD check taps two blocks (the shipped model's kind), with its model.onnx."""
    fitted = make_fitted(tmp_path_factory.mktemp("variants"), ood_method="mahalanobis+layers", ood_taps=TAPS)
    report = export_onnx(fitted.folder)
    assert report.taps == TAPS and report.max_rel_map_diff is not None  # the CAM can start from its map
    return fitted


def load_all(folder: Path) -> dict[str, Predictor]:
    predictors = {variant: Predictor.from_pretrained(folder, variant=variant) for variant in VARIANTS}
    assert {name: p.variant for name, p in predictors.items()} == {v: v for v in VARIANTS}
    return predictors


def assert_same_answers(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=PROB_ATOL, rtol=0)
        assert a.label == b.label and a.view_labels == b.view_labels
        assert a.out_of_distribution == b.out_of_distribution
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-4, abs=1e-4)
        assert [c["image_id"] for c in a.similar_cases] == [c["image_id"] for c in b.similar_cases]
        np.testing.assert_allclose([c["similarity"] for c in a.similar_cases],
                                   [c["similarity"] for c in b.similar_cases], atol=1e-4)


def test_auto_chooses_onnxruntime_when_the_file_serves_the_folder(layered):
    chosen = Predictor.from_pretrained(layered.folder)
    assert chosen.variant == "onnxruntime" and chosen.variant_note is None
    assert chosen.taps == TAPS and chosen.ood_detector.method == "mahalanobis+layers"


def test_every_variant_predicts_what_eager_fp32_predicts(layered):
    images = [synthetic_lesion(s, (120, 90), label=s % 3) for s in range(6)] + list(non_lesion_images().values())
    predictors = load_all(layered.folder)
    expected = predictors["eager"].predict(images)
    assert sum(p.out_of_distribution for p in expected) >= 1  # the check has something to agree on
    for variant in ("channels_last", "onnxruntime"):
        assert_same_answers(predictors[variant].predict(images), expected)
    x = torch.stack([predictors["eager"].preprocess(i)[0] for i in images])
    logits, feats = predictors["eager"].forward_views_with_features(x, "full")
    for variant in ("channels_last", "onnxruntime"):
        got_logits, got_feats = predictors[variant].forward_views_with_features(x, "full")
        torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_feats, feats, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_every_variant_explains_what_eager_explains(layered, method):
    """The CAM from the forward's own feature map (channels_last, onnxruntime) equals the eager path's
    second forward through the whole model."""
    image = synthetic_lesion(11, (150, 110), label=1)
    predictors = load_all(layered.folder)
    expected = predictors["eager"].explain(image, method=method, target="mel")
    for variant in ("channels_last", "onnxruntime"):
        got = predictors[variant].explain(image, method=method, target="mel")
        np.testing.assert_allclose(got.heatmap, expected.heatmap, atol=1e-4)
        assert got.prediction.label == expected.prediction.label


def test_scorecam_reruns_the_whole_model_on_every_variant(layered):
    image = synthetic_lesion(12, (120, 90), label=2)
    predictors = load_all(layered.folder)
    expected = predictors["eager"].explain(image, method="scorecam", tta="none")
    got = predictors["onnxruntime"].explain(image, method="scorecam", tta="none")
    np.testing.assert_allclose(got.heatmap, expected.heatmap, atol=1e-4)


def test_batch_paths_give_the_predictors_own_answers_with_decoding_workers(layered, tmp_path):
    """`skinlesion predict` and evaluate.py's stream decode in a DataLoader worker and convert whole batches;
    the numbers are those of Predictor.predict on each file, in file order, an unreadable file kept in place."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        synthetic_lesion(40 + i, (100, 80), label=i % 3).save(images / f"img_{i}.jpg", quality=95)
    (images / "img_2b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "preds.csv"
    summary = predict_folder(PredictConfig(model=str(layered.folder), images=images, out=out, batch_size=2,
                                           workers=1, skip_bad=True, progress=False))
    assert summary["variant"] == "onnxruntime" and summary["unreadable"] == 1
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == sorted(p.name for p in images.iterdir())
    eager = Predictor.from_pretrained(layered.folder, variant="eager")
    for row in rows:
        if row["error"]:
            assert row["path"] == "img_2b.jpg"
            continue
        expected = eager.predict(images / row["path"])
        assert row["label"] == expected.label
        assert float(row["ood_score"]) == pytest.approx(expected.ood_score, rel=1e-4, abs=1e-4)
        for name, p in expected.probs.items():
            assert float(row[f"prob_{name}"]) == pytest.approx(p, abs=PROB_ATOL)

    from skinlesion.data import load_table, read_manifest, select_split

    table = select_split(load_table(layered.data), read_manifest(layered.folder / "split_manifest.csv"), "test")
    streamed = collect_view_logits(Predictor.from_pretrained(layered.folder), table, "flips", batch_size=4,
                                   workers=1, progress=False)
    x = torch.stack([eager.preprocess(p)[0] for p in table.frame["path"]])
    logits, feats = eager.forward_views_with_features(x, "flips")
    torch.testing.assert_close(streamed.logits, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(streamed.features, feats, atol=1e-4, rtol=1e-4)


def test_an_onnx_file_that_does_not_serve_the_folder_falls_back_saying_why(layered, tmp_path, caplog):
    folder = shutil.copytree(layered.folder, tmp_path / "refit")
    export_onnx(folder, taps=("stages.3",))  # as if the detector was refitted on other taps after the export
    with caplog.at_level("WARNING"):
        fallback = Predictor.from_pretrained(folder)
    assert fallback.variant == "channels_last" and "stages.3" in fallback.variant_note
    assert "re-export" in caplog.text
    with pytest.raises(ModelFolderError, match="re-export"):
        Predictor.from_pretrained(folder, variant="onnxruntime")
    images = [synthetic_lesion(s, (120, 90), label=s % 3) for s in range(3)]
    assert_same_answers(fallback.predict(images), Predictor.from_pretrained(folder, variant="eager").predict(images))


def test_an_unknown_variant_is_refused(layered):
    with pytest.raises(ValueError, match="unknown inference variant"):
        Predictor.from_pretrained(layered.folder, variant="fast")
    with pytest.raises(ValueError, match="contradicts"):
        Predictor.from_pretrained(layered.folder, variant="onnxruntime", use_onnx=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_variants_agree_on_real_dermoscopy(shared_data, tmp_path):
    """The shipped ensemble on real images of both test sets: every variant as eager fp32 (with a model.onnx
    exported here when weights/ has none or a stale one)."""
    from skinlesion.imageio import find_images

    folder = WEIGHTS
    if Predictor.from_pretrained(WEIGHTS).variant != "onnxruntime":
        folder = shutil.copytree(WEIGHTS, tmp_path / "weights")
        export_onnx(folder)
    images = (find_images(shared_data / "ISIC2017_test" / "images")[:8]
              + find_images(shared_data / "HAM10000" / "images")[:8])
    predictors = load_all(folder)
    expected = predictors["eager"].predict(images)
    for variant in ("channels_last", "onnxruntime"):
        assert_same_answers(predictors[variant].predict(images), expected)
    explained = {v: predictors[v].explain(images[0]) for v in VARIANTS}
    for variant in ("channels_last", "onnxruntime"):
        np.testing.assert_allclose(explained[variant].heatmap, explained["eager"].heatmap, atol=1e-4)
