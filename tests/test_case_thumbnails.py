"""The similar cases' shipped pictures: one lazily read file in the model folder (synthetic images)."""

from __future__ import annotations

import pytest
from conftest import synthetic_lesion

from skinlesion.app.extras import CaseImages, extras_view, selected_case
from skinlesion.inference import case_thumbnails as ct


def write_images(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"ISIC_{i:07d}.jpg"
        synthetic_lesion(i, (200, 150), label=i % 3).save(path)
        paths.append(path)
    return [p.stem for p in paths], paths


def test_round_trip_small_pictures_with_their_aspect(tmp_path):
    ids, paths = write_images(tmp_path / "img")
    path = ct.save_thumbnails(tmp_path, ids, paths, manifest_sha256="abc")
    thumbs = ct.load_thumbnails(tmp_path, ids, "abc")
    assert len(thumbs) == len(ids) and path.stat().st_size < 50_000
    picture = thumbs.get(ids[3])
    assert picture.size == (ct.DEFAULT_SIDE, ct.DEFAULT_SIDE * 150 // 200)       # 4:3 kept
    # The picture is the right image: closer to its own source than to another one.
    own = synthetic_lesion(3, (200, 150), label=0).resize(picture.size)
    other = synthetic_lesion(4, (200, 150), label=1).resize(picture.size)
    import numpy as np
    diff = lambda a, b: np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()  # noqa: E731
    assert diff(picture, own) < diff(picture, other)
    assert thumbs.get("ISIC_9999999") is None


def test_refuses_another_split_or_missing_cases(tmp_path):
    ids, paths = write_images(tmp_path / "img")
    ct.save_thumbnails(tmp_path, ids[:4], paths[:4], manifest_sha256="abc")
    with pytest.raises(ct.CaseThumbnailsError, match="split manifest"):
        ct.load_thumbnails(tmp_path, ids[:4], "other")
    with pytest.raises(ct.CaseThumbnailsError, match="no picture for 2 of the 6"):
        ct.load_thumbnails(tmp_path, ids, "abc")
    assert ct.load_thumbnails(tmp_path / "img", ids, "abc") is None  # a folder without the file: no pictures


def test_over_budget_is_refused_and_nothing_written(tmp_path, monkeypatch):
    ids, paths = write_images(tmp_path / "img")
    monkeypatch.setattr(ct, "MAX_FILE_BYTES", 100)
    with pytest.raises(ct.CaseThumbnailsError, match="budget"):
        ct.save_thumbnails(tmp_path, ids, paths, manifest_sha256="abc")
    assert not list(tmp_path.glob("*.safetensors"))


def test_app_shows_shipped_pictures_without_cases_images(tmp_path):
    ids, paths = write_images(tmp_path / "img", n=3)
    ct.save_thumbnails(tmp_path, ids, paths, manifest_sha256="abc")
    thumbs = ct.load_thumbnails(tmp_path, ids, "abc")
    details = {"similar_cases": [{"image_id": i, "label": "nv", "similarity": 0.9, "source": "isic2017"} for i in ids]}
    none_given = CaseImages.unavailable("")
    assert extras_view(details, none_given).gallery == []
    view = extras_view(details, none_given.with_thumbnails(thumbs))
    assert len(view.gallery) == 3 and "isic2017" in view.gallery[0][1]
    picture, caption = selected_case(details, 1, none_given.with_thumbnails(thumbs))
    assert picture is not None and ids[1] in caption and "from isic2017" in caption
