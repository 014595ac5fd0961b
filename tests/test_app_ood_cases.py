"""The app's refusal of non-dermoscopic images and its similar-cases panel, without a browser."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import synthetic_lesion
from fitted_folder import make_fitted, non_lesion_images, write_tiny_model

from skinlesion import app as logic
from skinlesion.hub import HubUnavailableError


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted(tmp_path_factory.mktemp("app_cases"))


@pytest.fixture(scope="module")
def registry(fitted) -> logic.ModelRegistry:
    registry = logic.ModelRegistry([logic.ModelSpec(str(fitted.folder))])
    registry.load_all(warm_cam=False)
    return registry


def upload(folder: Path, name: str, image) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    image.save(path)
    return str(path)


def test_a_non_dermoscopic_upload_is_refused_and_its_output_demoted(registry, tmp_path):
    a = logic.analyze(registry, upload(tmp_path, "noise", non_lesion_images()["colour noise"]))
    assert logic.OOD_REFUSAL in a.warnings and a.warnings.lstrip().startswith("### ⚠")
    assert "crop to the inside of the circle" in a.warnings  # the workaround for aperture-framed dermoscopy
    assert "Uncertain" not in a.warnings  # the refusal supersedes the ranking's own doubts
    assert a.summary.startswith("**Not a result.**")
    d = a.details
    assert d["out_of_distribution"] is True and d["ood_method"] == "mahalanobis"
    assert d["ood_score"] < d["ood_threshold"] and d["ood_available"] is True
    view = logic.extras_view(d, None)
    assert view.flagged and "anyway" in view.result_label and "not meaningful" in view.cases_label
    assert "least unlike" in view.cases_status


def test_a_lesion_upload_is_a_result_with_cases(registry, fitted, tmp_path):
    a = logic.analyze(registry, upload(tmp_path, "lesion", synthetic_lesion(99, (160, 120), label=1)))
    assert logic.OOD_REFUSAL not in a.warnings and not a.summary.startswith("**Not a result")
    assert a.details["out_of_distribution"] is False and len(a.details["similar_cases"]) == 5
    images = logic.CaseImages.from_folder(fitted.data)
    view = logic.extras_view(a.details, images)
    assert not view.flagged and view.result_label == "Model output"
    assert len(view.gallery) == 5 and all(img.size[0] <= logic.CASE_THUMBNAIL_SIDE for img, _ in view.gallery)
    assert "Retrieval vote" in view.cases_status and "Calibrated softmax" in view.cases_status
    first = a.details["similar_cases"][0]
    assert f"`{first['image_id']}`" in view.table and first["dx_type"] in view.table
    picture, caption = logic.selected_case(a.details, 0, images)
    assert picture is not None and first["image_id"] in caption
    assert logic.selected_case(a.details, 7, images) == (None, "")


def test_without_pictures_the_cases_are_a_table_and_the_page_says_why(registry, tmp_path):
    a = logic.analyze(registry, upload(tmp_path, "lesion", synthetic_lesion(98, (160, 120), label=0)))
    view = logic.extras_view(a.details, logic.CaseImages.unavailable(""))
    assert view.gallery == [] and view.table.count("| `ISIC_") == 5
    assert "Pictures unavailable" in view.cases_status and "--cases-images" in view.cases_status


def test_a_folder_without_stats_or_index_says_both_are_unavailable(tmp_path):
    registry = logic.ModelRegistry([logic.ModelSpec(str(write_tiny_model(tmp_path / "plain")))])
    a = logic.analyze(registry, upload(tmp_path, "noise", non_lesion_images()["colour noise"]))
    assert a.details["out_of_distribution"] is False and a.details["ood_available"] is False
    assert logic.OOD_REFUSAL not in a.warnings
    view = logic.extras_view(a.details, None)
    assert "unavailable" in view.ood_status and "skinlesion fit-features" in view.ood_status
    assert "unavailable" in view.cases_status and view.table == "" and not view.flagged
    ood_line, cases_line = logic.extras_intro(registry, "plain", None)
    assert "unavailable" in ood_line and "unavailable" in cases_line


def test_an_offline_cases_dataset_fails_fast_and_becomes_a_note(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError):
        logic.CaseImages.from_hub("nobody-here/no-such-cases-7f3a")
    images = logic.case_images_from(None, "nobody-here/no-such-cases-7f3a")
    assert time.perf_counter() - start < 10
    assert images.paths == {} and "unavailable" in images.note
    view = logic.extras_view({"similar_cases": [{"image_id": "x", "label": "mel", "similarity": 0.5}]}, images)
    assert "no-such-cases" in view.cases_status


def test_predict_api_keeps_its_eight_outputs_and_the_extras_stay_private(registry, tmp_path):
    from gradio_client import Client, handle_file
    from test_app_client import serve

    path = upload(tmp_path, "noise", non_lesion_images()["checkerboard"])
    with serve(registry) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
        api = client.view_api(return_format="dict", print_info=False)
        assert set(api["named_endpoints"]) == {"/predict", "/compare"} and not api["unnamed_endpoints"]
        out = client.predict(handle_file(path), api_name="/predict")
        assert len(out) == 8
        warnings, details = out[5], out[7]
        assert logic.OOD_REFUSAL in warnings
        assert details["out_of_distribution"] is True and {"ood_score", "ood_threshold"} <= set(details)


def test_model_card_states_the_aperture_limitation_only_for_block_statistics_without_the_crop():
    from skinlesion.models.card import _feature_extras_lines

    def card(params, fov_crop=False):
        detector = {"file": "ood_stats.safetensors", "method": "m", "threshold": -1.0, "quantile": 0.01,
                    "params": params}
        return "\n".join(_feature_extras_lines({"ood_detector": detector, "fov_crop": fov_crop}, Path("/nonexistent")))

    assert "circular field of view" in card({"taps": ["blocks.4"]})
    assert "circular field of view" not in card({})
    cropped = card({"taps": ["blocks.4"]}, fov_crop=True)  # the surround is cropped away before the check
    assert "Known limitation" not in cropped and "cropped away" in cropped
