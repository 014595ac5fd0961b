"""Every dataset layout, read from synthetic files; auto-detection, --layout override and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_factory import (
    make_ham10000,
    make_imagefolder,
    make_isic2017,
    make_isic2018,
    make_isic2019,
    make_ph2,
    png_header_only,
    write_csv,
    write_image,
)

from skinlesion.data import DataError, detect_layout, load_table, verify_images
from skinlesion.taxonomy import describe_label, malignant_indices, parse_label_map

# --- each layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kaggle_parts", [True, False], ids=["kaggle_part_1_2", "flat_images"])
def test_ham10000_finds_images_by_id_in_any_subfolder(tmp_path: Path, kaggle_parts: bool) -> None:
    expected = make_ham10000(tmp_path, kaggle_parts=kaggle_parts)
    assert detect_layout(tmp_path) == "ham10000"
    table = load_table(tmp_path)
    frame = table.frame
    assert table.layout == "ham10000"
    assert len(frame) == expected["n_images"]
    assert frame["group"].nunique() == expected["n_groups"]
    assert frame["label"].value_counts().to_dict() == expected["classes"]
    assert table.classes == sorted(expected["classes"])
    for image_id, path in zip(frame["image_id"], frame["path"], strict=True):
        assert Path(path).is_file() and Path(path).stem == image_id
    if kaggle_parts:
        assert {Path(p).parent.name for p in frame["path"]} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    # An empty age (as in the real metadata) is missing, not an error; others are numbers.
    assert frame["age"].isna().sum() == 1
    assert frame["age"].dropna().min() == 41.0


def test_ham10000_csv_path_and_describe(tmp_path: Path) -> None:
    expected = make_ham10000(tmp_path)
    table = load_table(tmp_path / "HAM10000_metadata.csv")
    report = table.describe()
    assert report["layout"] == "ham10000"
    assert report["n_images"] == expected["n_images"]
    assert report["n_groups"] == expected["n_groups"]
    assert report["classes"] == dict(sorted(expected["classes"].items()))
    assert report["problems"] == [] and report["counters"]["missing_images"] == 0


def test_isic2018_one_hot(tmp_path: Path) -> None:
    cols = make_isic2018(tmp_path)
    assert detect_layout(tmp_path) == "isic2018"
    table = load_table(tmp_path)
    labels = dict(zip(table.frame["image_id"], table.frame["label"], strict=True))
    assert [labels[f"ISIC_{i:07d}"] for i in range(len(cols))] == [c.lower() for c in cols]
    # Images without lesion ids are each their own group.
    assert table.frame["group"].nunique() == len(cols)


def test_isic2019_maps_ak_and_scc_to_akiec_and_drops_unk(tmp_path: Path) -> None:
    cols = make_isic2019(tmp_path)
    assert detect_layout(tmp_path) == "isic2019"
    table = load_table(tmp_path)
    labels = dict(zip(table.frame["image_id"], table.frame["label"], strict=True))
    by_col = {col: labels.get(f"ISIC_{i:07d}") for i, col in enumerate(cols)}
    assert by_col == {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl", "DF": "df",
                      "VASC": "vasc", "SCC": "akiec", "UNK": None}
    assert table.counters["dropped_unk"] == 1
    assert any("UNK" in p for p in table.problems)
    assert table.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_isic2017_part3(tmp_path: Path) -> None:
    expected = make_isic2017(tmp_path)
    assert detect_layout(tmp_path) == "isic2017"
    table = load_table(tmp_path)
    assert dict(zip(table.frame["image_id"], table.frame["label"], strict=True)) == expected


def test_isic2017_both_positive_is_a_bad_row(tmp_path: Path) -> None:
    make_isic2017(tmp_path)
    csv = tmp_path / "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text().replace("ISIC_0000003,0.0,0.0", "ISIC_0000003,1.0,1.0"))
    with pytest.raises(DataError, match=r"row 5: both melanoma and seborrheic_keratosis"):
        load_table(tmp_path)
    table = load_table(tmp_path, skip_bad=True)
    assert "ISIC_0000003" not in set(table.frame["image_id"])
    assert table.counters["bad_rows"] == 1


def test_imagefolder_with_label_map(tmp_path: Path) -> None:
    counts = make_imagefolder(tmp_path)
    assert detect_layout(tmp_path) == "imagefolder"
    raw = load_table(tmp_path)
    assert raw.frame["label"].value_counts().to_dict() == counts  # folder names kept without a map
    assert not raw.frame["image_id"].str.contains("_lesion").any()  # the mask is not a sample
    assert raw.counters["ignored_files"] == 1 and "notes.txt" in raw.problems[0]

    mapped = load_table(tmp_path, label_map=parse_label_map("common_nevus=nv,atypical_nevus=nv,melanoma=mel"))
    assert mapped.frame["label"].value_counts().to_dict() == {"nv": 5, "mel": 2}
    assert mapped.classes == ["mel", "nv"]


def test_ph2_native_layout(tmp_path: Path) -> None:
    expected = make_ph2(tmp_path)
    assert detect_layout(tmp_path) == "ph2"
    table = load_table(tmp_path)
    assert dict(zip(table.frame["image_id"], table.frame["label"], strict=True)) == expected
    # The dermoscopic image, never the _lesion or _roi masks beside it.
    assert all(Path(p).parent.name.endswith("_Dermoscopic_Image") for p in table.frame["path"])
    mapped = load_table(tmp_path, label_map={"common_nevus": "nv", "atypical_nevus": "nv", "melanoma": "mel"})
    assert mapped.frame["label"].value_counts().to_dict() == {"nv": 4, "mel": 1}


def test_ph2_bad_diagnosis_code_names_the_line(tmp_path: Path) -> None:
    make_ph2(tmp_path)
    txt = tmp_path / "PH2_dataset.txt"
    lines = txt.read_text().splitlines()
    lines[2] = lines[2].replace("   0   ", "   7   ")  # IMD003
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"PH2_dataset.txt line 3: clinical diagnosis '7' of IMD003"):
        load_table(tmp_path)
    assert len(load_table(tmp_path, skip_bad=True).frame) == 4


def test_explicit_layout_overrides_detection(tmp_path: Path) -> None:
    make_ham10000(tmp_path)
    # Forced to read the HAM10000 folder as one folder per class, the Kaggle parts become the classes.
    table = load_table(tmp_path, layout="imagefolder")
    assert table.layout == "imagefolder"
    assert set(table.frame["label"]) == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_explicit_isic_layout_must_match_the_csv(tmp_path: Path) -> None:
    make_isic2019(tmp_path)
    assert load_table(tmp_path, layout="isic2019").layout == "isic2019"
    with pytest.raises(DataError) as err:
        load_table(tmp_path, layout="isic2018")
    message = str(err.value)
    assert "ISIC_2019_Training_GroundTruth.csv" in message and "'AK'" in message  # found columns
    assert "'AKIEC'" in message  # expected columns


def test_unknown_layout_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown layout 'kaggle'"):
        load_table(tmp_path, layout="kaggle")


# --- bad input ------------------------------------------------------------------------------------


def test_missing_image_listed_in_csv(tmp_path: Path) -> None:
    make_ham10000(tmp_path, kaggle_parts=False)
    (tmp_path / "images" / "ISIC_0000004.jpg").unlink()
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv row 6: image 'ISIC_0000004' not found"):
        load_table(tmp_path)
    table = load_table(tmp_path, skip_bad=True)
    assert table.counters["missing_images"] == 1
    assert "ISIC_0000004" not in set(table.frame["image_id"])
    assert any("ISIC_0000004" in p for p in table.problems)


def test_unknown_label(tmp_path: Path) -> None:
    make_ham10000(tmp_path, kaggle_parts=False)
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text().replace("ISIC_0000010,df", "ISIC_0000010,dermatofibrosarcoma"))
    with pytest.raises(DataError, match=r"row 12: unknown label 'dermatofibrosarcoma'"):
        load_table(tmp_path)
    table = load_table(tmp_path, skip_bad=True)
    assert table.counters["unknown_labels"] == 1
    assert "df" not in table.classes
    # A label map may name the unknown label, which then counts as known.
    mapped = load_table(tmp_path, label_map={"dermatofibrosarcoma": "df"})
    assert mapped.frame["label"].value_counts()["df"] == 1


def test_wrong_ham_columns_list_found_and_expected(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "ISIC_0000000.jpg", seed=0)
    write_csv(tmp_path / "HAM10000_metadata.csv", "lesion,image,diagnosis", ["HAM_1,ISIC_0000000,nv"])
    with pytest.raises(DataError) as err:
        load_table(tmp_path)
    message = str(err.value)
    assert "HAM10000_metadata.csv" in message
    assert "found ['lesion', 'image', 'diagnosis']" in message
    assert "expected ['lesion_id', 'image_id', 'dx']" in message


def test_folder_with_unrecognised_csv_is_not_taken_for_an_image_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "ISIC_0000000.jpg", seed=0)
    write_csv(tmp_path / "labels.csv", "file,diagnosis", ["ISIC_0000000,MEL"])
    with pytest.raises(DataError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert "labels.csv: ['file', 'diagnosis']" in message and "'seborrheic_keratosis'" in message


def test_binary_file_named_csv_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "ground_truth.csv"
    bad.write_bytes(b"\xff\xfe\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="ground_truth.csv"):
        load_table(bad)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_table(tmp_path / "nowhere")


def _ham_with_bad_files(root: Path) -> None:
    make_ham10000(root, kaggle_parts=False)
    images = root / "images"
    good = (images / "ISIC_0000001.jpg").read_bytes()
    (images / "ISIC_0000001.jpg").write_bytes(good[: len(good) // 2])        # truncated JPEG
    (images / "ISIC_0000002.jpg").write_text("<html>404 Not Found</html>")   # not an image at all


def test_corrupt_and_non_image_files_raise_naming_the_file(tmp_path: Path) -> None:
    _ham_with_bad_files(tmp_path)
    table = load_table(tmp_path)  # reading the table does not decode images
    with pytest.raises(DataError, match=r"ISIC_0000001\.jpg"):
        verify_images(table)


def test_corrupt_and_non_image_files_skipped_and_counted(tmp_path: Path) -> None:
    _ham_with_bad_files(tmp_path)
    table = verify_images(load_table(tmp_path), skip_bad=True)
    assert table.counters["unreadable_images"] == 2
    assert set(table.frame["image_id"]).isdisjoint({"ISIC_0000001", "ISIC_0000002"})
    assert len(table.frame) == 10
    joined = "\n".join(table.problems)
    assert "ISIC_0000001.jpg" in joined and "ISIC_0000002.jpg" in joined
    assert "not an image" in joined


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_refused(tmp_path: Path) -> None:
    make_ham10000(tmp_path, kaggle_parts=False)
    # 12,000 x 9,000 = 108 megapixels claimed by a file of a few hundred bytes.
    bomb = png_header_only(tmp_path / "images" / "ISIC_0000003.png", 12_000, 9_000)
    (tmp_path / "images" / "ISIC_0000003.jpg").unlink()
    assert bomb.stat().st_size < 1000
    table = load_table(tmp_path)
    with pytest.raises(DataError, match=r"ISIC_0000003\.png: image is 12000x9000 .* above the 64 MP limit"):
        verify_images(table)
    skipped = verify_images(table, skip_bad=True)
    assert skipped.counters["unreadable_images"] == 1
    assert "ISIC_0000003" not in set(skipped.frame["image_id"])


def test_duplicate_image_id_is_refused(tmp_path: Path) -> None:
    make_ham10000(tmp_path, kaggle_parts=False)
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text() + "HAM_0000009,ISIC_0000000,nv,histo,50.0,male,back\n")
    with pytest.raises(DataError, match="'ISIC_0000000' appears more than once"):
        load_table(tmp_path)


# --- taxonomy used by label maps ------------------------------------------------------------------


def test_folder_label_malignancy_follows_aliases() -> None:
    labels = ["basal_cell_carcinoma", "common_nevus", "melanoma", "scc", "seborrheic_keratosis"]
    assert malignant_indices(labels) == [0, 2, 3]
    assert describe_label("atypical_nevus").name == "Atypical nevus"  # keeps its own name
    assert describe_label("MEL").code == "mel"


def test_parse_label_map_rejects_malformed_entries() -> None:
    assert parse_label_map(" a = nv , b=mel,") == {"a": "nv", "b": "mel"}
    with pytest.raises(ValueError, match="'melanoma' is not SRC=DST"):
        parse_label_map("melanoma")

