"""Similar confirmed cases: the index built from the training split, its file, queries grouped by lesion,
the retrieval vote, the manifest-hash guard, and evaluation that never lets a set see itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import synthetic_lesion
from fitted_folder import make_fitted, write_tiny_model
from sklearn.metrics import balanced_accuracy_score

from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.inference import cases
from skinlesion.inference.predictor import Predictor
from skinlesion.models.folder import ModelFolderError, update_extras
from skinlesion.training import fit_features


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted(tmp_path_factory.mktemp("cases"))


@pytest.fixture
def fitted_copy(fitted, tmp_path):
    return shutil.copytree(fitted.folder, tmp_path / "model")


def hand_index(vectors: list[list[float]], lesions: list[str | None], labels: list[str]) -> cases.CaseIndex:
    """An index whose space is the given 2-d vectors (identity projection, no centring)."""
    v = torch.nn.functional.normalize(torch.tensor(vectors), dim=1)
    return cases.CaseIndex(vectors=v, centre=torch.zeros(2), components=torch.eye(2),
                           image_ids=[f"img{i}" for i in range(len(vectors))], labels=labels,
                           dx_types=["histo"] * len(vectors), lesion_ids=lesions, manifest_sha256="m")


# -- build, save, reload ------------------------------------------------------------------------------------

def test_index_holds_the_training_split_with_its_metadata_and_no_pixels(fitted):
    index = cases.read_index(fitted.folder / "case_index.safetensors")
    assert sorted(index.image_ids) == sorted(fitted.ids("train")) and len(index) == 54
    assert index.dims == 8 and index.feature_dim == 16
    table = load_table(fitted.data).frame.set_index("image_id")
    for image_id, label, dx_type, lesion in zip(index.image_ids, index.labels, index.dx_types, index.lesion_ids,
                                                strict=True):
        assert label == table.loc[image_id, "label"] and lesion == table.loc[image_id, "group"]
        assert dx_type == ("histo" if int(image_id[-7:]) % 2 else "follow_up")
    torch.testing.assert_close(index.vectors.norm(dim=1), torch.ones(54), atol=2e-3, rtol=0)
    size = (fitted.folder / "case_index.safetensors").stat().st_size
    assert size < 100_000  # 54 x 8 fp16 vectors + names: no image data
    entry = json.loads((fitted.folder / "config.json").read_text())["skinlesion"]["case_index"]
    assert entry["n_cases"] == 54 and entry["n_lesions"] == 27 and entry["bytes"] == size
    assert entry["manifest_sha256"] == index.manifest_sha256 == fitted.summary["manifest_sha256"]


def test_save_and_reload_give_the_same_neighbours(fitted, tmp_path):
    index = cases.read_index(fitted.folder / "case_index.safetensors")
    cases.save_index(tmp_path, index)
    again = cases.read_index(tmp_path / "case_index.safetensors")
    assert again.image_ids == index.image_ids and again.labels == index.labels
    assert again.dx_types == index.dx_types and again.lesion_ids == index.lesion_ids
    assert torch.equal(again.vectors, index.vectors) and torch.equal(again.components, index.components)
    queries = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    assert again.search(queries, 5) == index.search(queries, 5)


def test_build_refuses_a_file_over_the_size_budget(monkeypatch, fitted, tmp_path):
    index = cases.read_index(fitted.folder / "case_index.safetensors")
    monkeypatch.setattr(cases, "MAX_FILE_BYTES", 1000)
    with pytest.raises(cases.CaseIndexError, match="over the 0 MB budget"):
        cases.save_index(tmp_path, index)
    assert not list(tmp_path.iterdir())  # nothing half-written


# -- queries -------------------------------------------------------------------------------------------

def test_a_query_that_is_an_indexed_image_returns_itself_first(fitted):
    predictor = Predictor.from_pretrained(fitted.folder)
    for image_id in fitted.ids("train")[:6]:
        pred = predictor.predict(fitted.image(image_id))
        first = pred.similar_cases[0]
        assert first["image_id"] == image_id and first["similarity"] == pytest.approx(1.0, abs=2e-3)
        assert set(first) == {"image_id", "label", "similarity", "dx_type", "lesion_id", "source"}


def test_one_lesion_is_one_case_best_image_kept():
    index = hand_index([[1, 0], [0.99, 0.14], [0.9, 0.43], [0, 1], [0.7, 0.7]],
                       ["L1", "L1", "L2", "L3", None], ["mel", "mel", "nv", "bkl", "nv"])
    found = index.search(torch.tensor([[1.0, 0.0]]), 3)[0]
    assert [c.image_id for c in found] == ["img0", "img2", "img4"]   # img1 is L1 again; img4 has no lesion id
    assert [c.lesion_id for c in found] == ["L1", "L2", None]
    assert found[0].similarity >= found[1].similarity >= found[2].similarity


def test_search_fills_k_lesions_even_when_the_nearest_images_share_one():
    many = [[1, 0.01 * i] for i in range(40)] + [[0, 1]]
    index = hand_index(many, ["L1"] * 40 + ["L2"], ["nv"] * 41)
    found = index.search(torch.tensor([[1.0, 0.0]]), 2)[0]
    assert [c.lesion_id for c in found] == ["L1", "L2"]


def test_excluded_cases_are_never_returned():
    index = hand_index([[1, 0], [0.9, 0.43], [0, 1]], ["L1", "L2", "L3"], ["mel", "nv", "bkl"])
    mask = index.exclusion_mask(image_ids=["img0"], lesion_ids=["L3"])
    assert mask.tolist() == [True, False, True]
    found = index.search(torch.tensor([[1.0, 0.0]]), 3, exclude=mask)[0]
    assert [c.image_id for c in found] == ["img1"]


def test_retrieval_vote_is_the_similarity_weighted_class_share():
    found = [cases.Case("a", "mel", 0.9), cases.Case("b", "nv", 0.6), cases.Case("c", "mel", 0.3),
             cases.Case("d", "nv", -0.2)]
    vote = cases.retrieval_vote(found, ["bkl", "mel", "nv"])
    assert vote == pytest.approx({"bkl": 0.0, "mel": 1.2 / 1.8, "nv": 0.6 / 1.8})
    assert sum(vote.values()) == pytest.approx(1.0)



def test_class_prior_counts_lesions_and_the_balanced_vote_divides_by_it():
    # Three nv lesions (one with two images) and one mel lesion: the prior counts lesions, not images.
    index = hand_index([[1, 0], [0.99, 0.14], [0.9, 0.43], [0.8, 0.6], [0, 1]],
                       ["L1", "L1", "L2", "L3", "L4"], ["nv", "nv", "nv", "nv", "mel"])
    assert index.class_prior == pytest.approx({"nv": 0.75, "mel": 0.25})
    found = [cases.Case("a", "nv", 0.6), cases.Case("b", "mel", 0.3)]
    plain = cases.retrieval_vote(found, ["mel", "nv"])
    balanced = cases.retrieval_vote(found, ["mel", "nv"], prior=index.class_prior)
    assert plain == pytest.approx({"mel": 1 / 3, "nv": 2 / 3})
    # mel's weight 0.3 / 0.25 = 1.2 against nv's 0.6 / 0.75 = 0.8: the rarer class wins the tie-break
    assert balanced == pytest.approx({"mel": 0.6, "nv": 0.4})


def test_prediction_and_evaluation_use_the_class_balanced_vote(fitted, monkeypatch):
    from skinlesion.evaluation.ood_retrieval import ood_retrieval_markdown, retrieval_report
    from skinlesion.evaluation.view_logits import collect_view_logits

    predictor = Predictor.from_pretrained(fitted.folder)
    # The synthetic index is balanced (a third per class), where both votes coincide: skew the prior so a
    # path that forgot it would give another answer.
    skewed = {"bkl": 0.05, "mel": 0.15, "nv": 0.8}
    monkeypatch.setattr(predictor.case_index, "class_prior", skewed)
    image = synthetic_lesion(4321, (120, 90), label=2)
    pred = predictor.predict(image)
    _, features = predictor.forward_views_with_features(predictor.preprocess(image)[0][None], "none")
    nearest = predictor.nearest_cases(features)[0][:predictor.vote_k]
    names = list(predictor.label_names)
    expected = cases.retrieval_vote(nearest, names, prior=skewed)
    assert expected != pytest.approx(cases.retrieval_vote(nearest, names))
    assert pred.retrieval_vote == pytest.approx(expected)

    table = load_table(fitted.data)
    test = select_split(table, read_manifest(fitted.folder / "split_manifest.csv"), "test")
    out = collect_view_logits(predictor, test, "none", batch_size=8, workers=0, progress=False)
    report = retrieval_report(predictor, out.logits, out.features, out.targets, test, 1.0)
    found = predictor.case_index.search(out.features, predictor.vote_k)
    votes = np.array([[v[c] for c in names] for v in (cases.retrieval_vote(n, names, prior=skewed) for n in found)])
    assert report["vote"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(out.targets.numpy(), votes.argmax(1)))
    gap = report["vote_minus_softmax"]
    softmax_bacc = balanced_accuracy_score(out.targets.numpy(), out.logits.mean(0).argmax(1).numpy())
    assert gap["difference"] == pytest.approx(report["vote"]["balanced_accuracy"] - softmax_bacc)
    assert gap["low"] <= gap["difference"] <= gap["high"]
    assert "Vote minus softmax" in ood_retrieval_markdown({"model": {"name": "m"}, "retrieval": report})


def test_prediction_carries_cases_and_a_vote_beside_the_softmax(fitted):
    predictor = Predictor.from_pretrained(fitted.folder)
    pred = predictor.predict(synthetic_lesion(4321, (120, 90), label=2))
    assert len(pred.similar_cases) == 5
    assert len({c["lesion_id"] for c in pred.similar_cases}) == 5
    sims = [c["similarity"] for c in pred.similar_cases]
    assert sims == sorted(sims, reverse=True)
    assert set(pred.retrieval_vote) == set(pred.probs) and sum(pred.retrieval_vote.values()) == pytest.approx(1.0)
    data = json.loads(json.dumps(pred.to_dict()))
    assert data["similar_cases"][0]["image_id"].startswith("ISIC_") and "retrieval_vote" in data


def test_precision_at_k_per_class():
    neighbours = [[cases.Case("x", "mel", 1), cases.Case("y", "nv", 1)], [cases.Case("z", "nv", 1)] * 2,
                  [cases.Case("w", "mel", 1)] * 2]
    p = cases.precision_at_k(["mel", "nv", "mel"], neighbours, 2)
    assert p["per_class"] == {"mel": pytest.approx(0.75), "nv": pytest.approx(1.0)}
    assert p["macro"] == pytest.approx(0.875) and p["n_queries"] == {"mel": 2, "nv": 1}


# -- without an index, broken index, wrong split ------------------------------------------------------------

def test_a_folder_without_an_index_predicts_with_cases_off(tmp_path):
    predictor = Predictor.from_pretrained(write_tiny_model(tmp_path / "m"))
    pred = predictor.predict(synthetic_lesion(1))
    assert pred.similar_cases is None and pred.retrieval_vote is None
    assert "unavailable" in predictor.cases_status
    assert predictor.explain(synthetic_lesion(1)).prediction.similar_cases is None


def test_corrupt_index_file_is_a_clear_error_naming_it(fitted_copy):
    path = fitted_copy / "case_index.safetensors"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ModelFolderError, match=r"case_index\.safetensors: unreadable"):
        Predictor.from_pretrained(fitted_copy)


def test_an_index_for_another_split_is_refused(fitted_copy):
    update_extras(fitted_copy, manifest_sha256="0" * 64)  # the model says it was trained on another split
    with pytest.raises(cases.ManifestMismatchError,
                       match=r"case_index\.safetensors.*must never be shown for a model trained on another split"):
        Predictor.from_pretrained(fitted_copy)


def test_building_from_another_manifest_is_refused(fitted, tmp_path):
    folder = shutil.copytree(fitted.folder, tmp_path / "model")
    other = tmp_path / "other_manifest.csv"
    lines = (folder / "split_manifest.csv").read_text().splitlines()
    other.write_text("\n".join([lines[0], *(line.replace(",test", ",train") for line in lines[1:])]) + "\n")
    cfg = fit_features.FitFeaturesConfig(model=str(folder), data=str(fitted.data), manifest=str(other), workers=0,
                                         progress=False)
    with pytest.raises(cases.ManifestMismatchError, match="never be shown"):
        fit_features.run(cfg)


# -- evaluation ----------------------------------------------------------------------------------------

def test_evaluation_excludes_the_evaluated_set_from_the_index(fitted):
    from skinlesion.evaluation.ood_retrieval import retrieval_report
    from skinlesion.evaluation.view_logits import collect_view_logits

    predictor = Predictor.from_pretrained(fitted.folder)
    table = load_table(fitted.data)
    manifest = read_manifest(fitted.folder / "split_manifest.csv")
    train = select_split(table, manifest, "train")
    part = type(train)(frame=train.frame.iloc[:20].reset_index(drop=True), layout=train.layout, root=train.root)
    out = collect_view_logits(predictor, part, "none", batch_size=8, workers=0, progress=False)
    report = retrieval_report(predictor, out.logits, out.features, out.targets, part, 1.0)
    own_lesions = set(part.frame["group"])
    n_excluded = sum(lesion in own_lesions for lesion in predictor.case_index.lesion_ids)
    assert report["available"] and report["excluded_from_index"] == n_excluded >= 20
    neighbours = predictor.case_index.search(
        out.features, 5, exclude=predictor.case_index.exclusion_mask(part.frame["image_id"], part.frame["group"]))
    assert not {c.lesion_id for row in neighbours for c in row} & own_lesions
    # Evaluating the whole train split would leave no index to search: said, not scored.
    whole = collect_view_logits(predictor, train, "none", batch_size=32, workers=0, progress=False)
    assert retrieval_report(predictor, whole.logits, whole.features, whole.targets, train, 1.0)["available"] is False


def test_evaluate_reports_flag_rates_and_the_vote_beside_the_softmax(fitted, tmp_path):
    import importlib.util
    from pathlib import Path

    from fitted_folder import non_lesion_images

    spec = importlib.util.spec_from_file_location("evaluate_script", Path(__file__).resolve().parents[1] / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    junk = tmp_path / "junk"
    junk.mkdir()
    for name, image in non_lesion_images().items():
        image.save(junk / f"{name.replace(' ', '_')}.png")
    out = tmp_path / "eval"
    rc = evaluate.main(["--model", str(fitted.folder), "--data", str(fitted.data), "--ood-folder", str(junk),
                        "--bootstrap", "0", "--workers", "0", "--no-progress", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    ood = report["ood"]
    assert ood["available"] and ood["method"] == "mahalanobis"
    assert ood["folders"][str(junk)] == {**ood["folders"][str(junk)], "n_images": 4, "n_flagged": 4, "flag_rate": 1.0}
    assert 0.0 <= ood["labelled_set"]["flag_rate"] <= 1.0 and ood["labelled_set"]["n_images"] == 18
    retrieval = report["retrieval"]
    assert retrieval["available"] and retrieval["excluded_from_index"] == 0  # test lesions are not in train
    assert set(retrieval["vote"]) == set(retrieval["softmax"]) >= {"balanced_accuracy", "melanoma_auc"}
    assert set(retrieval["precision_at_k"]["per_class"]) == {"bkl", "mel", "nv"}
    assert all(0 <= v <= 1 for v in retrieval["precision_at_k"]["per_class"].values())
    md = (out / "report.md").read_text()
    assert "not a dermoscopic image?" in md and "retrieval vote" in md and str(junk) in md


def test_evaluate_without_index_or_stats_says_unavailable(tmp_path):
    from skinlesion.evaluation.ood_retrieval import ood_report, retrieval_report

    predictor = Predictor.from_pretrained(write_tiny_model(tmp_path / "m"))
    logits, feats = predictor.forward_views_with_features(torch.zeros(2, 3, 64, 64))
    assert ood_report(predictor, logits, feats, {})["available"] is False
    table = type("T", (), {"frame": None})()
    assert retrieval_report(predictor, logits, feats, torch.zeros(2).long(), table, 1.0)["available"] is False
    assert np.isfinite(float(predictor.predict(synthetic_lesion(0)).ood_score))


def test_bench_inference_measures_what_the_extras_add(fitted):
    from skinlesion.bench import inference as bench_inference

    report = bench_inference.run(bench_inference.InferenceBenchConfig(str(fitted.folder), repeats=2, images=0,
                                                                      app=False))
    assert report["extras"] == {"ood_method": "mahalanobis", "case_index_size": 54}
    assert 0 < report["extras_over_request"] < 1  # a few matrix products beside a forward + CAM
    json.dumps(report)


def test_report_headings_name_the_model_not_the_last_ood_folder():
    from skinlesion.evaluation.ood_retrieval import ood_retrieval_markdown

    row = {"n_images": 4, "n_flagged": 1, "flag_rate": 0.25}
    headline = {"balanced_accuracy": 0.5, "melanoma_auc": None, "malignant_auc": None, "accuracy": 0.5}
    report = {"model": {"name": "weights"},
              "ood": {"available": True, "method": "mahalanobis", "threshold": -1.0, "quantile": 0.01,
                      "labelled_set": row, "folders": {"runs/ood_sets/cats": row}},
              "retrieval": {"available": True, "index_size": 10, "excluded_from_index": 0, "vote_k": 3,
                            "vote": headline, "softmax": headline,
                            "precision_at_k": {"k": 5, "macro": 0.5, "per_class": {"nv": 0.5}}}}
    text = ood_retrieval_markdown(report)
    assert "## weights: similar cases (retrieval vote)" in text and "| runs/ood_sets/cats | 4 | 1 | 0.250 |" in text
