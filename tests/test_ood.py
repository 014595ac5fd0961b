"""The out-of-distribution check: fitted on the training split's features, thresholded on validation,
stored in the model folder, applied on every path, refused when its file does not belong to the model."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import synthetic_lesion
from fitted_folder import make_fitted, non_lesion_images, write_tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

from skinlesion.data.transforms import Preprocessing
from skinlesion.inference import features as feature_split
from skinlesion.inference import ood
from skinlesion.inference.predictor import Predictor
from skinlesion.models.folder import ModelFolderError, set_preprocessing, update_extras


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted(tmp_path_factory.mktemp("ood"))


@pytest.fixture
def fitted_copy(fitted, tmp_path):
    """A private copy of the fitted folder, for tests that damage it."""
    return shutil.copytree(fitted.folder, tmp_path / "model")


# -- the shared piece: features and logits from one forward --------------------------------------------

def test_split_forward_reproduces_the_logits_and_gives_the_classifier_input(fitted):
    model = Predictor.from_pretrained(fitted.folder).loaded.model
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits, feats = feature_split.split_forward(model, x)
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(model.get_classifier()(feats), logits)
    assert feats.shape == (3, 16)  # lesion_cnn's hidden layer


def test_features_come_from_the_identity_view_whatever_the_tta(fitted):
    predictor = Predictor.from_pretrained(fitted.folder)
    x = predictor.preprocess(synthetic_lesion(3))[0][None]
    feats = {mode: predictor.forward_views_with_features(x, mode)[1] for mode in ("none", "flips", "full")}
    torch.testing.assert_close(feats["flips"], feats["none"])
    torch.testing.assert_close(feats["full"], feats["none"])
    flipped = predictor.forward_views_with_features(x.flip(-1), "none")[1]
    assert not torch.allclose(flipped, feats["none"])  # the image's own orientation, not an average


def test_a_head_that_is_not_classifier_of_pre_logits_has_no_features():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward_features(self, x):
            return x.mean(dim=(2, 3))

        def forward_head(self, x, pre_logits=False):
            return x if pre_logits else self.fc(x) * 2.0   # the classifier alone does not give the logits

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    with pytest.raises(feature_split.FeatureSplitError, match="does not reproduce"):
        feature_split.probe_feature_dim(Odd(), 8)


# -- fitting and flagging -------------------------------------------------------------------------------

def test_fitted_detector_flags_non_lesion_images_and_passes_a_lesion(fitted):
    predictor = Predictor.from_pretrained(fitted.folder)
    lesion = predictor.predict(synthetic_lesion(1234, (120, 90), label=1))
    assert lesion.ood_method == "mahalanobis" and lesion.ood_available
    assert lesion.out_of_distribution is False and lesion.ood_score >= lesion.ood_threshold
    for name, image in non_lesion_images().items():
        pred = predictor.predict(image)
        assert pred.out_of_distribution is True, name
        assert pred.ood_score < pred.ood_threshold, name


def test_threshold_is_the_validation_quantile(fitted):
    entry = json.loads((fitted.folder / "config.json").read_text())["skinlesion"]["ood_detector"]
    predictor = Predictor.from_pretrained(fitted.folder, tta="none")
    val = [fitted.image(i) for i in fitted.ids("val")]
    x = torch.stack([predictor.preprocess(p)[0] for p in val])
    logits, feats = predictor.forward_views_with_features(x)
    scores = predictor.ood_scores(logits, feats)
    assert entry["quantile"] == 0.05 and entry["fitted_on"] == {"train": 54, "val": 18}
    assert entry["threshold"] == pytest.approx(float(np.quantile(scores.numpy().astype(np.float64), 0.05)), rel=1e-5)
    assert entry["val_flag_rate"] == pytest.approx(float((scores < entry["threshold"]).float().mean()))
    assert entry["val_flag_rate"] <= 0.05 + 1 / len(val)


@pytest.mark.parametrize("method", ["mahalanobis", "mahalanobis_l2", "knn", "mahalanobis+knn"])
def test_each_feature_method_scores_far_points_below_near_ones(method):
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0]])
    labels = torch.arange(200) % 2
    train = centres[labels] + 0.3 * torch.randn(200, 4, generator=gen)
    val = centres[labels[:60]] + 0.3 * torch.randn(60, 4, generator=gen)
    stats, params = ood.fit_stats(method, train, labels, 2, knn_k=5)
    stats = ood.calibrate(method, stats, params, val)
    near = centres + 0.3 * torch.randn(2, 4, generator=gen)
    far = torch.tensor([[0.0, 0, 3, 0], [0, 0, 0, -3.0]])  # other directions (L2-normalised methods too)
    s_near, s_far = ood.score(method, stats, params, near, None), ood.score(method, stats, params, far, None)
    assert s_near.min() > s_far.max()


def test_combined_method_is_fishers_product_of_validation_p_values():
    ref = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert ood.p_value(torch.tensor([0.0, 2.0, 9.0]), ref[0]).tolist() == pytest.approx([0.2, 0.6, 1.0])
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(100) % 2
    feats = torch.randn(100, 3, generator=gen) + labels[:, None] * 2.0
    stats, params = ood.fit_stats("mahalanobis+knn", feats, labels, 2, knn_k=3)
    with pytest.raises(ValueError, match="calibrate"):
        ood.score("mahalanobis+knn", stats, params, feats[:2], None)
    stats = ood.calibrate("mahalanobis+knn", stats, params, feats[:40])
    query = torch.randn(5, 3, generator=gen)
    expected = sum(torch.log(ood.p_value(ood.score(part, stats, params, query, None), stats["val_scores"][i]))
                   for i, part in enumerate(("mahalanobis", "knn")))
    torch.testing.assert_close(ood.score("mahalanobis+knn", stats, params, query, None), expected)


def test_a_combined_detector_round_trips_through_the_folder(tmp_path):
    fitted = make_fitted(tmp_path, ood_method="mahalanobis+knn", knn_k=3, build_index=False)
    predictor = Predictor.from_pretrained(fitted.folder)
    assert predictor.ood_detector.method == "mahalanobis+knn" and predictor.case_index is None
    assert predictor.ood_detector.stats["val_scores"].shape == (2, 18)
    assert predictor.predict(synthetic_lesion(1234, (120, 90), label=1)).out_of_distribution is False
    assert all(predictor.predict(img).out_of_distribution for img in non_lesion_images().values())


def test_energy_method_uses_identity_logits_and_its_own_temperature():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    stats, params = ood.fit_stats("energy", torch.zeros(2, 3), torch.zeros(2), 2, temperature=2.0)
    expected = 2.0 * torch.logsumexp(logits / 2.0, dim=-1)
    torch.testing.assert_close(ood.score("energy", stats, params, None, logits), expected)


def test_unknown_method_and_bad_quantile_are_refused():
    with pytest.raises(ValueError, match="unknown OOD method"):
        ood.fit_stats("softmax", torch.zeros(4, 2), torch.zeros(4), 1)
    with pytest.raises(ValueError, match="quantile"):
        ood.threshold_at(np.arange(10.0), 0.7)


# -- the folder: without statistics, broken statistics --------------------------------------------------

def test_without_statistics_the_check_is_unavailable_and_never_flags(tmp_path):
    # The energy threshold that training and --fit-temperature write stays a record; alone it flags nothing.
    folder = write_tiny_model(tmp_path / "m")
    update_extras(folder, ood={"score": "energy", "threshold": 1e6, "quantile": 0.01})
    predictor = Predictor.from_pretrained(folder)
    for image in [synthetic_lesion(5), *non_lesion_images().values()]:
        pred = predictor.predict(image)
        assert pred.out_of_distribution is False
        assert pred.ood_method is None and pred.ood_available is False and pred.ood_threshold is None
        assert pred.ood_score == pytest.approx(pred.energy_score)
    assert "unavailable" in predictor.ood_status
    data = predictor.predict(synthetic_lesion(5)).to_dict()
    assert data["ood_available"] is False and data["ood_method"] is None


def test_corrupt_statistics_file_is_a_clear_error_naming_it(fitted_copy):
    (fitted_copy / "ood_stats.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file")
    with pytest.raises(ModelFolderError, match=r"ood_stats\.safetensors: unreadable"):
        Predictor.from_pretrained(fitted_copy)


def test_missing_statistics_file_named_in_the_config_is_an_error(fitted_copy):
    (fitted_copy / "ood_stats.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"ood_stats\.safetensors: missing"):
        Predictor.from_pretrained(fitted_copy)


def test_statistics_for_another_feature_dimension_are_refused(fitted_copy):
    path = fitted_copy / "ood_stats.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        means = f.get_tensor("means")
    wider = means.shape[1] + 4
    save_file({"means": torch.zeros(means.shape[0], wider), "precision": torch.eye(wider)}, str(path),
              metadata={**meta, "feature_dim": str(wider)})
    with pytest.raises(ModelFolderError, match=rf"ood_stats\.safetensors: statistics for {wider}-d features.*16-d"):
        Predictor.from_pretrained(fitted_copy)


def test_statistics_with_inconsistent_shapes_are_refused(fitted_copy):
    path = fitted_copy / "ood_stats.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({**tensors, "precision_triu": tensors["precision_triu"][:-1]}, str(path), metadata=meta)
    with pytest.raises(ModelFolderError, match=r"ood_stats\.safetensors: .*precision"):
        Predictor.from_pretrained(fitted_copy)
    full = ood.unpack_symmetric({"precision_triu": tensors["precision_triu"]}, "x")["precision"]
    save_file({**{k: v for k, v in tensors.items() if k != "precision_triu"}, "precision": full[:5, :].contiguous()},
              str(path), metadata=meta)
    with pytest.raises(ModelFolderError, match=r"ood_stats\.safetensors: .*precision"):
        Predictor.from_pretrained(fitted_copy)


def test_precision_matrices_are_stored_as_their_upper_triangle_and_read_back_whole():
    a = torch.randn(5, 5)
    stats = {"means": torch.randn(2, 5), "precision": (a @ a.T + (a @ a.T).T) / 2, "tap0_precision": torch.eye(3) * 2}
    packed = ood.pack_symmetric(stats)
    assert set(packed) == {"means", "precision_triu", "tap0_precision_triu"}
    assert packed["precision_triu"].numel() == 15
    back = ood.unpack_symmetric(packed, "x")
    assert set(back) == set(stats) and all(torch.equal(back[k], stats[k]) for k in stats)
    assert ood.unpack_symmetric(stats, "x").keys() == stats.keys()  # a file with whole matrices still reads


def test_statistics_from_other_weights_are_refused(fitted_copy, tmp_path):
    other = write_tiny_model(tmp_path / "other", seed=1)
    shutil.copy(other / "model.safetensors", fitted_copy / "model.safetensors")  # retrained, stats not refitted
    with pytest.raises(ModelFolderError, match=r"ood_stats\.safetensors: fitted for other weights"):
        Predictor.from_pretrained(fitted_copy)


def test_new_preprocessing_drops_the_feature_extras(fitted_copy):
    set_preprocessing(fitted_copy, Preprocessing(input_size=80))
    extras = json.loads((fitted_copy / "config.json").read_text())["skinlesion"]
    assert "ood_detector" not in extras and "case_index" not in extras
    predictor = Predictor.from_pretrained(fitted_copy)  # still loads; the checks are off until refitted
    assert predictor.ood_detector is None and predictor.case_index is None


# -- every path: CLI, ONNX ---------------------------------------------------------------------------------

def test_predict_cli_writes_the_flag_and_method(fitted, tmp_path):
    from skinlesion.cli.main import main

    images = tmp_path / "images"
    images.mkdir()
    synthetic_lesion(77, (120, 90), label=0).save(images / "lesion.png")
    non_lesion_images()["colour noise"].save(images / "noise.png")
    out = tmp_path / "pred.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict", "--model", str(fitted.folder), "--images", str(images), "--out", str(out), "--no-progress"]) == 0
    import csv

    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert rows["noise.png"]["out_of_distribution"] == "True" and rows["lesion.png"]["out_of_distribution"] == "False"
    assert rows["noise.png"]["ood_method"] == "mahalanobis" and float(rows["noise.png"]["ood_threshold"]) < 0
    assert rows["lesion.png"]["nearest_cases"].startswith("ISIC_")


def test_onnx_path_gives_the_same_flags_scores_and_cases(fitted_copy):
    from skinlesion.inference import onnx_export as export

    report = export.export_onnx(fitted_copy)
    assert report.max_rel_feature_diff is not None and report.max_rel_feature_diff < 1e-3
    fast = Predictor.from_pretrained(fitted_copy)
    eager = Predictor.from_pretrained(fitted_copy, use_onnx=False)
    assert fast.backend == "onnxruntime" and fast.features_unavailable is None
    images = [synthetic_lesion(s, (120, 90), label=s % 3) for s in range(3)] + list(non_lesion_images().values())
    for a, b in zip(fast.predict(images), eager.predict(images), strict=True):
        assert a.out_of_distribution == b.out_of_distribution
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-3)
        assert [c["image_id"] for c in a.similar_cases] == [c["image_id"] for c in b.similar_cases]


def test_a_logits_only_onnx_file_is_refused_when_the_folder_needs_features(fitted_copy, monkeypatch):
    from skinlesion.inference import onnx_export as export

    def no_split(*args, **kwargs):
        raise feature_split.FeatureSplitError("as exported before the features output existed")

    with monkeypatch.context() as patch:  # export as an old version did: logits only
        patch.setattr(feature_split, "probe_feature_dim", no_split)
        assert export.export_onnx(fitted_copy).max_rel_feature_diff is None
    with pytest.raises(ModelFolderError, match=r"model\.onnx outputs logits only; re-export"):
        Predictor.from_pretrained(fitted_copy, use_onnx=True)
    fallback = Predictor.from_pretrained(fitted_copy)  # chosen automatically: PyTorch, saying why
    assert fallback.backend == "torch" and "outputs logits only" in fallback.variant_note
    assert fallback.ood_detector is not None and fallback.features_unavailable is None


# -- mahalanobis+layers: the tapped blocks' statistics, from the same forward ---------------------------

TAPS = ("stages.2", "stages.3")


def test_taps_append_each_modules_spatial_mean_and_std_and_leave_no_hooks(fitted):
    model = Predictor.from_pretrained(fitted.folder).loaded.model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits, plain = feature_split.split_forward(model, x)
        tapped_logits, tapped = feature_split.split_forward(model, x, TAPS)
        stage2 = model.stages[2](model.stages[1](model.stages[0](x)))
        stage3 = model.stages[3](stage2)
    torch.testing.assert_close(tapped_logits, logits)
    torch.testing.assert_close(tapped[:, :16], plain)  # the penultimate part is unchanged
    expected = torch.cat([feature_split.tap_statistics(stage2), feature_split.tap_statistics(stage3)], dim=1)
    torch.testing.assert_close(tapped[:, 16:], expected)
    assert expected.shape[1] == 2 * 16 + 2 * 32  # mean and std per channel, widths [8, 16, 16, 32]
    assert feature_split.probe_feature_widths(model, 64, taps=TAPS) == [16, 32, 64]
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(feature_split.FeatureSplitError, match="no module 'blocks.9'"):
        feature_split.split_forward(model, x, ["blocks.9"])
    assert all(not m._forward_hooks for m in model.modules())


def test_layers_method_flags_what_only_a_tapped_block_sees():
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(300) % 2
    penultimate = torch.tensor([[3.0, 0, 0], [0, 3.0, 0]])[labels] + 0.3 * torch.randn(300, 3, generator=gen)
    tap = 0.3 * torch.randn(300, 2, generator=gen)
    feats = torch.cat([penultimate, tap], dim=1)
    stats, params = ood.fit_stats("mahalanobis+layers", feats[:200], labels[:200], 2, taps=["b"], tap_dims=[2])
    assert params["penultimate_dim"] == 3 and params["taps"] == ["b"]
    stats = ood.calibrate("mahalanobis+layers", stats, params, feats[200:])
    assert stats["val_scores"].shape == (2, 100)
    typical = feats[:2].clone()
    odd_texture = typical.clone()
    odd_texture[:, 3:] = 5.0  # typical class features, but a block's statistics far from the training images
    s_typical = ood.score("mahalanobis+layers", stats, params, typical, None)
    s_odd = ood.score("mahalanobis+layers", stats, params, odd_texture, None)
    assert s_odd.max() < s_typical.min()
    assert torch.equal(ood.score("mahalanobis", stats, params, odd_texture[:, :3], None),
                       ood.score("mahalanobis", stats, params, typical[:, :3], None))  # the penultimate part alone misses it
    with pytest.raises(ValueError, match="taps"):
        ood.fit_stats("mahalanobis+layers", feats, labels, 2)


@pytest.fixture(scope="module")
def layers_fitted(tmp_path_factory):
    return make_fitted(tmp_path_factory.mktemp("layers"), ood_method="mahalanobis+layers", ood_taps=TAPS)


def test_a_layers_detector_round_trips_and_taps_on_every_path(layers_fitted, tmp_path):
    from skinlesion.inference import onnx_export as export

    predictor = Predictor.from_pretrained(layers_fitted.folder, use_onnx=False)
    assert predictor.taps == TAPS and predictor.feature_dim == 16 and predictor.ood_feature_dim == 16 + 96
    assert predictor.ood_detector.method == "mahalanobis+layers"
    assert predictor.ood_detector.stats["val_scores"].shape[0] == 3
    assert predictor.predict(synthetic_lesion(1234, (120, 90), label=1)).out_of_distribution is False
    flagged = [predictor.predict(img).out_of_distribution for img in non_lesion_images().values()]
    assert sum(flagged) >= 3
    lesion = predictor.predict(synthetic_lesion(7, (120, 90), label=0))
    assert len(lesion.similar_cases) == 5  # the index reads the first 16 columns of the wider features
    folder = shutil.copytree(layers_fitted.folder, tmp_path / "model")
    assert export.export_onnx(folder).max_rel_feature_diff < 1e-3
    fast = Predictor.from_pretrained(folder)
    assert fast.backend == "onnxruntime" and fast.ood_feature_dim == 112
    images = [synthetic_lesion(7, (120, 90), label=0)] + list(non_lesion_images().values())
    for a, b in zip(fast.predict(images), predictor.predict(images), strict=True):
        assert a.out_of_distribution == b.out_of_distribution
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-3)


def test_a_stale_onnx_export_without_the_taps_is_refused(layers_fitted, fitted, tmp_path):
    from skinlesion.inference import onnx_export as export

    folder = shutil.copytree(layers_fitted.folder, tmp_path / "model")
    plain = shutil.copytree(fitted.folder, tmp_path / "plain")
    export.export_onnx(plain)  # same weights (write_tiny_model's seed), features without the taps
    shutil.copy(plain / "model.onnx", folder / "model.onnx")
    with pytest.raises(ModelFolderError, match=r"carries the statistics of \[\] but the features asked for tap"):
        Predictor.from_pretrained(folder, use_onnx=True)
    assert Predictor.from_pretrained(folder).variant == "channels_last"  # automatic: PyTorch, saying why


def test_layers_statistics_with_a_wrong_tap_width_are_refused(layers_fitted, tmp_path):
    folder = shutil.copytree(layers_fitted.folder, tmp_path / "model")
    path = folder / "ood_stats.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["tap1_means"] = tensors["tap1_means"][:, :-2].contiguous()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ood.OodStatsError, match="tap1_means"):
        Predictor.from_pretrained(folder)


def test_fit_features_wants_taps_exactly_with_the_layers_method(fitted, tmp_path):
    from skinlesion.training import fit_features

    with pytest.raises(ValueError, match="--ood-taps"):
        fit_features.run(fit_features.FitFeaturesConfig(model=str(fitted.folder), data=str(fitted.data),
                                                        ood_method="mahalanobis+layers"))
    with pytest.raises(ValueError, match="--ood-taps"):
        fit_features.run(fit_features.FitFeaturesConfig(model=str(fitted.folder), data=str(fitted.data),
                                                        ood_method="mahalanobis", ood_taps=TAPS))


def test_mahalanobis_score_matches_the_per_class_distance_and_follows_new_statistics():
    # The score expands (x - m)'P(x - m) with cached P m and m'P m; it must equal the direct form, also for a
    # second set of means with the same precision (the cache is keyed by the precision matrix).
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    precision = a @ a.T + torch.eye(6)
    means = torch.randn(3, 6, generator=g)
    x = torch.randn(10, 6, generator=g) * 3

    def direct(m):
        diff = x[:, None, :] - m[None]
        return -torch.einsum("bcd,de,bce->bc", diff, precision, diff).min(dim=1).values

    for m in (means, means + 2.0, means):
        got = ood.score("mahalanobis", {"means": m, "precision": precision}, {}, x, None)
        assert torch.allclose(got, direct(m), rtol=1e-5, atol=1e-4)
