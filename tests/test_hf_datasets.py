"""Hugging Face datasets as a source: a dataset saved with `save_to_disk`, and Hub ids that fail fast offline."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.data import DataError, detect_layout, load_table

datasets = pytest.importorskip("datasets")

NAMES = ["bkl", "mel", "nv"]


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SKINLESION_CACHE", str(cache))
    return cache


def _features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                              "lesion_id": datasets.Value("string")})


def _images(n: int) -> list[Image.Image]:
    return [synthetic_lesion(i, (40, 30), label=i % 3) for i in range(n)]


def save_dataset(folder: Path, labels: list[int], lesions: list[str] | None = None) -> list[Image.Image]:
    images = _images(len(labels))
    lesions = lesions or [""] * len(labels)
    ds = datasets.Dataset.from_dict({"image": images, "label": labels, "lesion_id": lesions}, features=_features())
    ds.save_to_disk(str(folder))
    return images


def test_saved_dataset_is_detected_and_exported(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "saved"
    images = save_dataset(folder, [0, 1, 2, 2, 1], lesions=["L1", "L1", "", "L3", "L4"])
    assert detect_layout(folder) == "hf"
    table = load_table(folder)
    frame = table.frame
    assert table.layout == "hf"
    assert frame["label"].tolist() == ["bkl", "mel", "nv", "nv", "mel"]  # ClassLabel names, not ints
    assert frame["group"].tolist() == ["L1", "L1", frame["image_id"][2], "L3", "L4"]  # no lesion id: own group
    for path, original in zip(frame["path"], images, strict=True):
        assert Path(path).is_relative_to(hf_cache)
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(original))  # lossless
    assert table.counters["exported_images"] == 5


def test_second_read_reuses_the_exported_files(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "saved"
    save_dataset(folder, [0, 1, 2])
    first = load_table(folder)
    stamps = [Path(p).stat().st_mtime_ns for p in first.frame["path"]]
    second = load_table(folder)
    assert second.frame["path"].tolist() == first.frame["path"].tolist()
    assert [Path(p).stat().st_mtime_ns for p in second.frame["path"]] == stamps


def test_dataset_dict_split_and_explicit_layout(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "dict"
    ds = datasets.Dataset.from_dict({"image": _images(4), "label": [0, 0, 1, 2], "lesion_id": [""] * 4},
                                    features=_features())
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select([3])}).save_to_disk(str(folder))
    assert len(load_table(folder, layout="hf").frame) == 3  # 'train' by default
    test = load_table(folder, layout="hf", split="test")
    assert test.frame["label"].tolist() == ["nv"]
    with pytest.raises(DataError, match=r"no split 'validation'; it has \['train', 'test'\]"):
        load_table(folder, split="validation")


def test_missing_label_is_not_read_as_the_last_class(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "saved"
    save_dataset(folder, [0, -1, 1])  # ClassLabel stores a missing label as -1
    with pytest.raises(DataError, match=r"row 1 .*no valid label \(-1\)"):
        load_table(folder)
    table = load_table(folder, skip_bad=True)
    assert table.frame["label"].tolist() == ["bkl", "mel"]
    assert table.counters["bad_rows"] == 1


def test_undecodable_image_bytes_named_and_skipped(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "saved"
    images = [{"bytes": b"GIF89a-broken", "path": None}, *_images(2)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2], "lesion_id": [""] * 3},
                                    features=_features())
    ds.save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"row 0 .*(not an image|corrupt)"):
        load_table(folder)
    table = load_table(folder, skip_bad=True)
    assert table.frame["label"].tolist() == ["mel", "nv"]


def test_dataset_without_image_column_lists_columns(tmp_path: Path, hf_cache: Path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"pixels": [[1, 2]], "label": [0]}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"needs an image column .*found \['pixels', 'label'\]"):
        load_table(folder)


def _time_hub_failure(name: str) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_table(name)
    return str(err.value), time.monotonic() - start


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert detect_layout("someone/ham10000") == "hf"
    message, elapsed = _time_hub_failure("someone/ham10000")
    assert elapsed < 5
    assert "someone/ham10000" in message and "HF_HUB_OFFLINE=1" in message


def test_hub_id_with_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bind, note it, close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    message, elapsed = _time_hub_failure("someone/ham10000")
    assert elapsed < 5
    assert f"127.0.0.1:{port} is unreachable" in message and "someone/ham10000" in message


def test_hub_probe_is_bounded_even_when_nothing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A DNS lookup or a connect that hangs (no answer at all) must not hang the caller past the timeout.
    from skinlesion import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    monkeypatch.setattr(hub, "_connect", lambda host, port, timeout: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(hub.HubUnavailableError, match=r"hub.example:443 is unreachable \(no answer within 1 s\)"):
        hub.require_hub("a test", timeout=1.0)
    assert time.monotonic() - start < 3


def test_non_url_endpoint_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from skinlesion.hub import HubUnavailableError, require_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "localhost:8080")
    with pytest.raises(HubUnavailableError, match="is not an http"):
        require_hub("a test")
