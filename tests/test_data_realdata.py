"""The data layer on the real ../shared/data (skips cleanly when it is absent). Reads only; copies nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from skinlesion.cli.main import main
from skinlesion.data import lesion_grouped_split, load_table, read_duplicate_pairs

pytestmark = pytest.mark.realdata

HAM_CLASSES = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}


def describe(capsys, *argv: str) -> dict:
    assert main(["data", "describe", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_describe_ham10000(shared_data: Path, capsys) -> None:
    report = describe(capsys, str(shared_data / "HAM10000"), "--no-verify")
    assert report["layout"] == "ham10000"
    assert report["n_images"] == 10_015
    assert report["classes"] == HAM_CLASSES
    assert report["n_groups"] == 7_470  # before merging the duplicate pairs
    assert report["n_groups_after_merging_duplicates"] < 7_470
    assert report["problems"] == []


def test_describe_isic2017_test_decodes_every_image(shared_data: Path, capsys) -> None:
    # 600 small JPEGs: cheap enough to verify them all.
    report = describe(capsys, str(shared_data / "ISIC2017_test"))
    assert report["layout"] == "isic2017"
    assert report["n_images"] == 600
    assert report["classes"] == {"bkl": 90, "mel": 117, "nv": 393}
    assert report["counters"]["unreadable_images"] == 0 and report["problems"] == []


def test_ham10000_split_keeps_lesions_and_duplicates_together(shared_data: Path) -> None:
    root = shared_data / "HAM10000"
    table = load_table(root)
    pairs = read_duplicate_pairs(root / "duplicate_lesion_pairs.csv")
    assert len(pairs) == 18
    manifest = lesion_grouped_split(table, val=0.1, test=0.1, seed=0, duplicate_pairs=pairs)
    frame = table.frame.assign(split=manifest["split"].to_numpy())
    assert frame.groupby("group")["split"].nunique().max() == 1
    split_of = dict(zip(frame["image_id"], frame["split"], strict=True))
    group_split = frame.groupby("group")["split"].first()
    group_of = dict(zip(frame["image_id"], frame["group"], strict=True))
    for a, b in pairs:
        assert split_of[a] == split_of[b], (a, b)
        # every image of both lesions, not only the two paired images
        assert group_split[group_of[a]] == group_split[group_of[b]]
    whole = frame["label"].value_counts(normalize=True)
    for name, part in frame.groupby("split"):
        shares = part["label"].value_counts(normalize=True).reindex(whole.index, fill_value=0.0)
        assert (shares - whole).abs().max() < 0.02, name
    sizes = frame["split"].value_counts(normalize=True)
    assert sizes["val"] == pytest.approx(0.1, abs=0.01) and sizes["test"] == pytest.approx(0.1, abs=0.01)


def test_cli_split_on_ham10000(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifest.csv"
    assert main(["data", "split", str(shared_data / "HAM10000"), "--val", "0.1", "--test", "0.1", "--seed", "0",
                 "--out", str(out)]) == 0
    manifest = pd.read_csv(out, dtype=str)
    meta = pd.read_csv(shared_data / "HAM10000" / "HAM10000_metadata.csv", dtype=str)
    joined = meta.merge(manifest, on="image_id", validate="one_to_one")
    assert len(joined) == 10_015
    assert joined.groupby("lesion_id")["split"].nunique().max() == 1
