"""Several data sources in one table, their splits, and the near-duplicate screen (synthetic data only)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_factory import ISIC2017_HEADER, make_ham10000, write_csv
from PIL import Image

from skinlesion.data import DataError
from skinlesion.data import near_duplicates as nd
from skinlesion.data.sources import load_sources, parse_source
from skinlesion.training.config import TrainConfig
from skinlesion.training.setup import prepare_split


def textured(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A photograph-like image: smooth random colour fields at several scales, distinct for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3))
    for cells, weight in ((3, 1.0), (7, 0.5), (17, 0.25)):
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        out += weight * np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), float)
    return Image.fromarray(np.clip(out / 1.75, 0, 255).astype(np.uint8))


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def make_isic2017_split(root: Path, name: str, images: dict[str, tuple[Image.Image, str]]) -> Path:
    """An ISIC 2017 folder whose ground-truth file name declares its official split (`name`: Training, ...)."""
    rows = []
    for image_id, (image, label) in images.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / f"{image_id}.jpg", quality=92)
        rows.append(f"{image_id},{1.0 if label == 'mel' else 0.0},{1.0 if label == 'bkl' else 0.0}")
    write_csv(root / f"ISIC-2017_{name}_Part3_GroundTruth.csv", ISIC2017_HEADER, rows)
    return root


def test_parse_source_options_and_errors():
    spec = parse_source("../data/x,name=clinic,layout=isic2017,split=val")
    assert (spec.path, spec.name, spec.layout, spec.split) == ("../data/x", "clinic", "isic2017", "val")
    with pytest.raises(DataError, match="colour=red"):
        parse_source("../data/x,colour=red")
    with pytest.raises(DataError, match="split must be one of"):
        parse_source("../data/x,split=holdout")


def test_sources_are_tagged_and_isic_keeps_its_official_split(tmp_path):
    make_ham10000(tmp_path / "ham")
    make_isic2017_split(tmp_path / "isic_train", "Training", {f"ISIC_90000{i:02d}": (textured(i), lab) for i, lab in
                                                             enumerate(["mel", "nv", "bkl", "nv"])})
    make_isic2017_split(tmp_path / "isic_val", "Validation", {"ISIC_9100000": (textured(50), "mel")})
    table = load_sources([str(tmp_path / "ham"), str(tmp_path / "isic_train"), str(tmp_path / "isic_val")])
    frame = table.frame.set_index("image_id")
    assert frame.loc["ISIC_9000000", "source"] == "isic2017" and frame.loc["ISIC_0000000", "source"] == "ham10000"
    assert frame.loc["ISIC_9000000", "source_split"] == "train"
    assert frame.loc["ISIC_9100000", "source_split"] == "val"
    assert frame.loc["ISIC_0000000", "source_split"] == ""          # HAM10000 is split by lesion
    assert [s["split_rule"] for s in table.sources] == ["lesion-grouped", "official (train)", "official (val)"]
    # Lesion groups are per source: HAM's lesion ids cannot collide with another source's.
    assert frame.loc["ISIC_0000000", "group"].startswith("ham10000:")


def test_same_image_id_in_two_sources_is_an_error(tmp_path):
    make_isic2017_split(tmp_path / "a", "Training", {"ISIC_9000000": (textured(1), "nv")})
    make_isic2017_split(tmp_path / "b", "Validation", {"ISIC_9000000": (textured(2), "nv")})
    with pytest.raises(DataError, match="ISIC_9000000.*more than one source"):
        load_sources([str(tmp_path / "a"), str(tmp_path / "b")])


def test_screen_finds_resized_squashed_recompressed_copies_and_not_distinct_images():
    originals = [textured(seed) for seed in range(40)]
    copies = {
        "resized": originals[0].resize((100, 75), Image.Resampling.BILINEAR),
        "squashed": originals[1].resize((256, 256), Image.Resampling.BICUBIC),      # ISIC 2017's squares
        "recompressed": jpeg_roundtrip(originals[2], quality=40),
        "all_three": jpeg_roundtrip(originals[3].resize((160, 160)), quality=60),
    }
    hashes = np.stack([nd.image_hash_of(img) for img in [*originals, *copies.values()]])
    pairs = {(i, j) for i, j, _ in nd.close_pairs(hashes)}
    n = len(originals)
    for k, name in enumerate(copies):
        assert (k, n + k) in pairs, f"{name} copy of image {k} not found"
    # Every other pair is two different photographs: none may be reported.
    assert pairs == {(k, n + k) for k in range(len(copies))}


def test_training_leaks_are_train_images_duplicating_other_splits():
    split_of = {"a": "train", "b": "val", "c": "train", "d": "train", "e": "holdout", "f": "test"}
    pairs = [("a", "b"), ("c", "d"), ("e", "d"), ("f", "b")]
    assert nd.training_leaks(split_of, pairs) == {"a", "d"}


def test_prepare_split_leaves_out_training_duplicates_of_validation_and_holdout(tmp_path):
    base = {f"ISIC_80000{i:02d}": textured(100 + i) for i in range(12)}
    labels = ["mel", "nv", "bkl"]
    train = {k: (img, labels[i % 3]) for i, (k, img) in enumerate(base.items())}
    # The validation set holds a squashed copy of one training image, the held-out test a re-encoded copy of another.
    val = {"ISIC_8100000": (train["ISIC_8000000"][0].resize((256, 256)), "mel"),
           "ISIC_8100001": (textured(500), "nv"), "ISIC_8100002": (textured(501), "bkl")}
    held = {"ISIC_8200000": (jpeg_roundtrip(train["ISIC_8000005"][0], 50), "bkl")}
    make_isic2017_split(tmp_path / "tr", "Training", train)
    make_isic2017_split(tmp_path / "va", "Validation", val)
    make_isic2017_split(tmp_path / "te", "Test", held)
    cfg = TrainConfig(data=(str(tmp_path / "tr"), str(tmp_path / "va")), holdout=(str(tmp_path / "te"),),
                      output_dir=str(tmp_path / "out"), progress=False)
    split = prepare_split(cfg, is_main=True)
    assert set(split.train.frame["image_id"]) == set(train) - {"ISIC_8000000", "ISIC_8000005"}
    assert set(split.val.frame["image_id"]) == set(val)
    assert split.duplicate_screen["train_images_left_out"] == 2
    manifest = pd.read_csv(tmp_path / "out" / "split_manifest.csv").set_index("image_id")
    assert manifest.loc["ISIC_8000000", "split"] == "excluded" and manifest.loc["ISIC_8000005", "split"] == "excluded"
    assert set(manifest["source"]) == {"isic2017"}
    record = split.sources[0]
    assert record["per_split"]["train"] == {"mel": 3, "nv": 4, "bkl": 3} and record["per_split"]["excluded"] == {
        "mel": 1, "bkl": 1}
