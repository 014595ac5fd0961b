"""Lesion-grouped, class-stratified splits and their manifests, on synthetic tables (no images needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.data import (
    DataError,
    LesionTable,
    lesion_grouped_split,
    read_duplicate_pairs,
    read_manifest,
    select_split,
    write_manifest,
)
from skinlesion.data.splits import merge_groups, split_changes

# HAM10000's class shares: the imbalance the split has to respect.
HAM_SHARES = {"nv": 0.6695, "mel": 0.1111, "bkl": 0.1097, "bcc": 0.0513, "akiec": 0.0327, "vasc": 0.0142, "df": 0.0115}


def synthetic_table(n_images: int = 3000, seed: int = 0, ungrouped: int = 0) -> LesionTable:
    """Lesions of 1-4 images (HAM10000-like: ~70% single), labels drawn with HAM10000's shares.

    `ungrouped` extra rows have no lesion id (None) and must each be their own group.
    """
    rng = np.random.default_rng(seed)
    classes, shares = list(HAM_SHARES), np.array(list(HAM_SHARES.values()))
    rows, lesion = [], 0
    while len(rows) < n_images:
        label = classes[rng.choice(len(classes), p=shares / shares.sum())]
        size = int(rng.choice([1, 2, 3, 4], p=[0.7, 0.18, 0.08, 0.04]))
        for _ in range(min(size, n_images - len(rows))):
            rows.append({"image_id": f"img{len(rows):05d}", "path": "", "label": label, "group": f"les{lesion:05d}"})
        lesion += 1
    for i in range(ungrouped):
        rows.append({"image_id": f"solo{i:04d}", "path": "", "label": classes[i % 3], "group": None})
    frame = pd.DataFrame(rows)
    return LesionTable(frame=frame, layout="synthetic", root="synthetic")


@pytest.fixture(scope="module")
def table() -> LesionTable:
    return synthetic_table()


def _joined(table: LesionTable, manifest: pd.DataFrame) -> pd.DataFrame:
    assert list(manifest["image_id"]) == list(table.frame["image_id"])
    return table.frame.assign(split=manifest["split"].to_numpy())


def test_no_lesion_in_two_splits(table: LesionTable) -> None:
    frame = _joined(table, lesion_grouped_split(table, val=0.1, test=0.1, seed=0))
    splits_per_group = frame.groupby("group")["split"].nunique()
    assert splits_per_group.max() == 1
    assert frame["group"].nunique() < len(frame)  # the table really has multi-image lesions


def test_split_sizes_and_class_shares_match_the_whole(table: LesionTable) -> None:
    frame = _joined(table, lesion_grouped_split(table, val=0.1, test=0.1, seed=0))
    sizes = frame["split"].value_counts(normalize=True)
    assert sizes["train"] == pytest.approx(0.8, abs=0.01)
    assert sizes["val"] == pytest.approx(0.1, abs=0.01)
    assert sizes["test"] == pytest.approx(0.1, abs=0.01)
    whole = frame["label"].value_counts(normalize=True)
    for name, part in frame.groupby("split"):
        shares = part["label"].value_counts(normalize=True).reindex(whole.index, fill_value=0.0)
        assert (shares - whole).abs().max() < 0.02, f"{name}: {shares.round(4).to_dict()}"
        assert set(part["label"]) == set(whole.index), f"{name} lacks a class"


def test_multi_image_lesions_reach_val_and_test(table: LesionTable) -> None:
    # Regression: a largest-first greedy put nearly every multi-image lesion in train.
    frame = _joined(table, lesion_grouped_split(table, val=0.1, test=0.1, seed=0))
    multi = frame.groupby("group")["image_id"].transform("size") > 1
    share = multi.groupby(frame["split"]).mean()
    assert (share - multi.mean()).abs().max() < 0.1, share.round(3).to_dict()


def test_deterministic_for_a_seed_and_different_for_another(table: LesionTable) -> None:
    a = lesion_grouped_split(table, seed=0)
    b = lesion_grouped_split(table, seed=0)
    c = lesion_grouped_split(table, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a["split"] != c["split"]).mean() > 0.05


def test_duplicate_pairs_keep_paired_lesions_together(table: LesionTable) -> None:
    frame = table.frame
    first_image = frame.groupby("group")["image_id"].first()
    rng = np.random.default_rng(3)
    picked = rng.choice(len(first_image), size=(60, 2), replace=False)
    pairs = [(first_image.iloc[i], first_image.iloc[j]) for i, j in picked]
    manifest = lesion_grouped_split(table, seed=0, duplicate_pairs=pairs)
    split_of = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    group_of = dict(zip(frame["image_id"], frame["group"], strict=True))
    for a, b in pairs:
        assert split_of[a] == split_of[b]
        # ... and so does every other image of both lesions.
        lesion_splits = {split_of[i] for i in frame["image_id"] if group_of[i] in (group_of[a], group_of[b])}
        assert lesion_splits == {split_of[a]}
    # Without the pairs, random lesions land in different splits often enough that this test means something.
    plain = lesion_grouped_split(table, seed=0).set_index("image_id")["split"]
    assert sum(plain[a] != plain[b] for a, b in pairs) > 5


def test_merge_groups_is_transitive() -> None:
    frame = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "group": ["L1", "L2", "L3", "L4"]})
    merged = merge_groups(frame, [("a", "b"), ("b", "c"), ("x", "d")])  # 'x' is unknown: ignored
    assert merged.tolist() == ["L1", "L1", "L1", "L4"]


def test_rows_without_lesion_id_are_their_own_group() -> None:
    table = synthetic_table(n_images=300, ungrouped=200)
    frame = _joined(table, lesion_grouped_split(table, seed=0))
    solo = frame[frame["group"].isna()]
    # Were the missing ids one shared group, all 200 rows would sit in one split.
    assert solo["split"].nunique() == 3
    assert solo["split"].value_counts(normalize=True)["train"] == pytest.approx(0.8, abs=0.1)


def test_blank_lesion_id_is_also_its_own_group() -> None:
    table = synthetic_table(n_images=300, ungrouped=200)
    table.frame["group"] = table.frame["group"].fillna("  ")
    frame = _joined(table, lesion_grouped_split(table, seed=0))
    assert frame.loc[frame["image_id"].str.startswith("solo"), "split"].nunique() == 3


def test_zero_test_fraction_leaves_test_empty(table: LesionTable) -> None:
    manifest = lesion_grouped_split(table, val=0.2, test=0.0, seed=0)
    assert set(manifest["split"]) == {"train", "val"}


@pytest.mark.parametrize("val,test", [(0.5, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_bad_fractions_rejected(table: LesionTable, val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fractions"):
        lesion_grouped_split(table, val=val, test=test)


def test_manifest_round_trip_and_select_split(table: LesionTable, tmp_path: Path) -> None:
    manifest = lesion_grouped_split(table, seed=0)
    path = tmp_path / "sub" / "manifest.csv"
    write_manifest(manifest, path)
    assert path.read_text().splitlines()[0] == "image_id,split"
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), manifest.reset_index(drop=True), check_dtype=False)
    parts = {name: select_split(table, back, name) for name in ("train", "val", "test")}
    assert sum(len(p.frame) for p in parts.values()) == len(table.frame)
    assert set(parts["val"].frame["group"]).isdisjoint(parts["train"].frame["group"])
    assert select_split(table, back, "all") is table


def test_select_split_refuses_a_stale_manifest(table: LesionTable, tmp_path: Path) -> None:
    manifest = lesion_grouped_split(table, seed=0)
    grown = pd.concat([table.frame, pd.DataFrame([{"image_id": "new_image", "path": "", "label": "nv",
                                                     "group": "new"}])], ignore_index=True)
    bigger = LesionTable(frame=grown, layout="synthetic", root="synthetic")
    with pytest.raises(DataError, match=r"does not list 1 image\(s\).*'new_image'"):
        select_split(bigger, manifest, "train")
    with pytest.raises(DataError, match="unknown split 'validation'"):
        select_split(table, manifest, "validation")


@pytest.mark.parametrize("content,message", [
    ("image,fold\na,train\n", "columns image_id,split"),
    ("image_id,split\na,train\nb,holdout\n", r"unknown split name\(s\) \['holdout'\]"),
    ("image_id,split\na,train\na,test\n", "'a' is listed more than once"),
])
def test_read_manifest_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest(path)


def test_read_duplicate_pairs_strips_file_extensions(tmp_path: Path) -> None:
    path = tmp_path / "duplicate_lesion_pairs.csv"
    path.write_text("similarity,from_img,to_img\n0.98,ISIC_0033481.jpg,ISIC_0033421.jpg\n0.97,ISIC_1,ISIC_2\n")
    assert read_duplicate_pairs(path) == [("ISIC_0033481", "ISIC_0033421"), ("ISIC_1", "ISIC_2")]
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="from_img,to_img"):
        read_duplicate_pairs(path)


def test_a_larger_manifest_may_add_sources_and_exclude_training_images_but_not_move_any() -> None:
    shipped = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    grown = pd.DataFrame({"image_id": ["a", "b", "c", "x", "y"], "split": ["excluded", "val", "test", "train", "val"],
                          "source": ["ham", "ham", "ham", "isic", "isic"]})
    assert split_changes(shipped, grown) == []
    moved = grown.assign(split=["train", "train", "test", "train", "val"])
    assert split_changes(shipped, moved) == ["b: val -> train"]
    assert split_changes(shipped, grown[grown["image_id"] != "c"]) == ["c: test -> not listed"]
    # Only a training image may be left out: a test image turned `excluded` would shrink the test set.
    assert split_changes(shipped, grown.assign(split=["train", "val", "excluded", "train", "val"])) == [
        "c: test -> excluded"]
