"""Where the model fails, per group: `evaluate.py --by`, its counting rules, several --data sources, and the
metadata the readers attach (HAM10000's dx_type, ISIC 2017's age and sex)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_lesion

from skinlesion.data import DataError, load_table
from skinlesion.evaluation import groups
from skinlesion.evaluation.selection import select_images

REPO = Path(__file__).resolve().parents[1]
LABELS = ["bcc", "bkl", "mel", "nv"]  # bcc and mel are malignant
BCC, BKL, MEL, NV = range(4)


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _probs(predicted: list[int], mel_score: list[float]) -> np.ndarray:
    """(N, 4) probabilities whose argmax is `predicted` and whose melanoma column is `mel_score` (< 0.5 unless
    the row predicts mel)."""
    probs = np.full((len(predicted), 4), 0.0)
    for i, (c, m) in enumerate(zip(predicted, mel_score, strict=True)):
        probs[i, MEL] = m
        if c != MEL:
            probs[i, c] = 0.9 - m
        probs[i] += (1 - probs[i].sum()) / 4
    assert (probs.argmax(axis=1) == np.array(predicted)).all()
    return probs


def _synthetic():
    """Group 'right' (40): every melanoma called mel and ranked above every nevus. Group 'wrong' (40): every
    melanoma called nv and ranked below every nevus. Group 'few_mel' (40): 3 melanomas. Group 'tiny' (10)."""
    targets, predicted, mel_score, sex = [], [], [], []
    for i in range(20):  # right
        targets += [MEL, NV]
        predicted += [MEL, NV]
        mel_score += [0.6 + i * 0.01, 0.1 + i * 0.005]
    sex += ["right"] * 40
    for i in range(20):  # wrong
        targets += [MEL, NV]
        predicted += [NV, NV]
        mel_score += [0.05 + i * 0.001, 0.3 + i * 0.005]
    sex += ["wrong"] * 40
    for i in range(40):  # few_mel: 3 mel, 7 bcc, 10 bkl, 20 nv; each class called itself
        c = MEL if i < 3 else BCC if i < 10 else BKL if i < 20 else NV
        targets.append(c)
        predicted.append(c)
        mel_score.append(0.7 if c == MEL else 0.1)
    sex += ["few_mel"] * 40
    targets += [NV] * 10
    predicted += [NV] * 10
    mel_score += [0.1] * 10
    sex += ["tiny"] * 10
    n = len(targets)
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "path": "", "label": [LABELS[t] for t in targets],
                          "group": "", "age": [(25.0, None, 50.0, 80.0)[i % 4] for i in range(n)], "sex": sex, "site": None,
                          "dx_type": None})
    return frame, np.array(targets), _probs(predicted, mel_score)


def test_groups_scored_and_a_group_too_small_noted():
    frame, targets, probs = _synthetic()
    by = groups.by_groups(frame, targets, probs, LABELS, ["sex"], bootstrap=200, seed=0)
    rows = {g["group"]: g for g in by["sex"]["groups"]}
    assert [g["group"] for g in by["sex"]["groups"]] == ["few_mel", "right", "wrong", "tiny"]  # largest first

    right, wrong = rows["right"], rows["wrong"]
    assert right["n"] == 40 and right["n_per_class"] == {"mel": 20, "nv": 20} and right["n_malignant"] == 20
    assert right["balanced_accuracy"] == 1.0 and right["melanoma_auc"] == 1.0
    assert right["malignant_sensitivity"] == 1.0 and right["malignant_specificity"] == 1.0
    assert right["ci95"]["melanoma_auc"] == [1.0, 1.0]
    assert wrong["balanced_accuracy"] == 0.5 and wrong["melanoma_auc"] == 0.0
    assert wrong["malignant_sensitivity"] == 0.0 and wrong["malignant_specificity"] == 1.0

    few = rows["few_mel"]
    assert few["melanoma_auc"] is None and any("3 melanomas" in note for note in few["notes"])
    # bcc (7), bkl (10), nv (20) have >= 5 images; mel (3) is left out of balanced accuracy and named.
    assert few["balanced_accuracy_classes"] == ["bcc", "bkl", "nv"] and few["balanced_accuracy"] == 1.0
    assert any("mel (3)" in note for note in few["notes"])
    assert few["malignant_sensitivity"] == 1.0  # 10 malignant (3 mel + 7 bcc), all called malignant

    tiny = rows["tiny"]
    assert tiny["n"] == 10 and all(tiny[m] is None for m in groups.GROUP_METRICS)
    assert "too small" in tiny["notes"][0] and tiny["ci95"] == {}


def test_intervals_hold_the_estimate_and_repeat_with_the_seed():
    frame, targets, probs = _synthetic()
    rng = np.random.default_rng(3)
    noisy = probs + rng.uniform(0, 1.0, size=probs.shape)  # some answers changed: intervals not degenerate
    noisy /= noisy.sum(axis=1, keepdims=True)
    first = groups.by_groups(frame, targets, noisy, LABELS, ["sex"], bootstrap=300, seed=1)
    again = groups.by_groups(frame, targets, noisy, LABELS, ["sex"], bootstrap=300, seed=1)
    assert first == again
    other = groups.by_groups(frame, targets, noisy, LABELS, ["sex"], bootstrap=300, seed=2)
    assert other != first
    for g in first["sex"]["groups"]:
        for name, (low, high) in g["ci95"].items():
            assert 0.0 <= low <= g[name] <= high <= 1.0, (g["group"], name)


def test_age_is_banded_and_localization_means_site():
    assert [groups.age_band(a) for a in (0, 29.9, 30, 44, 45, 59, 60, 74, 75, 95, None, float("nan"), "")] == [
        "<30", "<30", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+", "unknown", "unknown",
        "unknown"]
    frame, targets, probs = _synthetic()
    by = groups.by_groups(frame, targets, probs, LABELS, ["age"], bootstrap=0)
    assert [g["group"] for g in by["age"]["groups"]] == ["<30", "45-59", "75+", "unknown"]  # band order
    assert sum(g["n"] for g in by["age"]["groups"]) == len(frame)
    frame["site"] = ["back", "scalp"] * (len(frame) // 2)
    assert groups.resolve_column("localization", frame) == "site"
    assert "site" in groups.by_groups(frame, targets, probs, LABELS, ["localization"], bootstrap=0)


def test_a_missing_column_names_itself_and_what_there_is():
    frame, targets, probs = _synthetic()
    with pytest.raises(groups.GroupColumnError) as err:
        groups.by_groups(frame, targets, probs, LABELS, ["skin_type"], bootstrap=0)
    message = str(err.value)
    assert "skin_type" in message and "no such column" in message and "age, sex" in message
    with pytest.raises(DataError, match="dx_type.*no values"):  # present in the table, empty in this data
        groups.resolve_column("dx_type", frame)


# -- end to end: evaluate.py --by on a synthetic HAM10000-layout set ---------------------------------------
def _ham_like(root: Path, folder: Path) -> Path:
    """60 test images (male: 45 = 15 per class; female: 15) + 6 train/val, a manifest in the model folder."""
    (root / "images").mkdir(parents=True)
    rows, splits = [], []
    for i in range(66):
        c = i % 3
        image_id = f"ISIC_{i:07d}"
        synthetic_lesion(i, size=(48, 36), label=c).save(root / "images" / f"{image_id}.png")
        rows.append({"lesion_id": f"HAM_{i}", "image_id": image_id, "dx": ("bkl", "mel", "nv")[c],
                     "dx_type": "histo" if i % 2 else "follow_up", "age": str(20 + i), "sex": "male" if i < 45 else "female",
                     "localization": "back"})
        splits.append({"image_id": image_id, "split": "test" if i < 60 else ("train", "val")[i % 2]})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    pd.DataFrame(splits).to_csv(folder / "split_manifest.csv", index=False)
    return root


def test_evaluate_by_writes_per_group_tables(tmp_path, tiny_model_folder, capsys):
    data = _ham_like(tmp_path / "ham", tiny_model_folder)
    out = tmp_path / "out"
    main = _evaluate_main()
    common = ["--model", str(tiny_model_folder), "--data", str(data), "--tta", "none", "--bootstrap", "50",
              "--workers", "0", "--no-progress"]
    assert main([*common, "--by", "sex", "localization,dx_type", "--by", "age", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert list(report["by"]) == ["sex", "site", "dx_type", "age"]
    assert report["by"]["site"]["asked_as"] == "localization"
    sex = {g["group"]: g for g in report["by"]["sex"]["groups"]}
    assert sex["male"]["n"] == 45 and sex["female"]["n"] == 15 and report["n_images"] == 60
    assert sex["male"]["balanced_accuracy"] is not None and sex["male"]["n_per_class"] == {"bkl": 15, "mel": 15, "nv": 15}
    assert sex["female"]["balanced_accuracy"] is None and "too small" in sex["female"]["notes"][0]
    assert {g["group"] for g in report["by"]["dx_type"]["groups"]} == {"histo", "follow_up"}
    markdown = (out / "report.md").read_text()
    assert "### By sex" in markdown and "| female | 15 |" in markdown and "too small" in markdown

    # A column the data lacks stops the run before any inference, naming the column and the ones there are.
    assert main([*common, "--by", "skin_type", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "skin_type" in err and "sex" in err and "dx_type" in err
    assert not (tmp_path / "bad" / "report.json").exists()


def test_several_sources_test_split_plus_a_held_out_set(tmp_path, tiny_model_folder, capsys):
    data = _ham_like(tmp_path / "ham", tiny_model_folder)
    other = tmp_path / "clinic_b"
    for c, label in enumerate(("mel", "nv")):
        (other / label).mkdir(parents=True)
        for i in range(4):
            synthetic_lesion(500 + 10 * c + i, size=(48, 36), label=c).save(other / label / f"b_{label}_{i}.png")
    out = tmp_path / "out"
    main = _evaluate_main()
    common = ["--model", str(tiny_model_folder), "--tta", "none", "--bootstrap", "0", "--workers", "0",
              "--no-progress"]
    rc = main([*common, "--data", str(data), f"{other},name=clinic_b", "--by", "source", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    # HAM10000: the manifest's 60 test images (not its train/val); clinic_b: not in the manifest, scored whole.
    assert report["n_images"] == 68 and report["data"]["split"] == "test"
    assert [(s["name"], s["n_images"]) for s in report["data"]["sources"]] == [("ham10000", 60), ("clinic_b", 8)]
    assert "held out" in report["data"]["sources"][1]["rule"]
    assert {g["group"]: g["n"] for g in report["by"]["source"]["groups"]} == {"ham10000": 60, "clinic_b": 8}
    # A source the manifest does not list has no validation split.
    assert main([*common, "--data", str(data), str(other), "--split", "val", "--out", str(tmp_path / "v")]) == 2
    assert "no validation split" in capsys.readouterr().err


def test_a_manifest_listing_part_of_a_source_is_refused(tmp_path, tiny_model_folder):
    from skinlesion.data.sources import load_sources

    data = _ham_like(tmp_path / "ham", tiny_model_folder)
    other = tmp_path / "b"
    (other / "nv").mkdir(parents=True)
    for i in range(2):
        synthetic_lesion(i, size=(48, 36)).save(other / "nv" / f"x{i}.png")
    manifest = pd.read_csv(tiny_model_folder / "split_manifest.csv")
    pd.concat([manifest, pd.DataFrame({"image_id": ["nv/x0"], "split": ["test"]})]).to_csv(tmp_path / "m.csv",
                                                                                          index=False)
    table = load_sources([str(data), str(other)])
    with pytest.raises(DataError, match="lists only part"):
        select_images(table, None, tmp_path / "m.csv")
    chosen, split, record = select_images(table, "all", tmp_path / "m.csv")
    assert split == "all" and len(chosen.frame) == 68 and [r["n_images"] for r in record] == [66, 2]


# -- metadata the readers attach -------------------------------------------------------------------------------
def test_isic2017_metadata_beside_the_ground_truth_gives_age_and_sex(tmp_path):
    root = tmp_path / "isic"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        synthetic_lesion(i, size=(40, 30)).save(root / "images" / f"ISIC_{i:07d}.png")
    (root / "ISIC-2017_Validation_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0,0.0\nISIC_0000001,0.0,1.0\nISIC_0000002,0.0,0.0\n")
    (root / "ISIC-2017_Validation_Data_metadata.csv").write_text(
        "image_id,age_approximate,sex\nISIC_0000000,55,female\nISIC_0000001,unknown,unknown\nISIC_0000002,80,male\n")
    frame = load_table(root).frame.set_index("image_id")
    assert frame.loc["ISIC_0000000", "age"] == 55 and frame.loc["ISIC_0000000", "sex"] == "female"
    assert pd.isna(frame.loc["ISIC_0000001", "age"]) and pd.isna(frame.loc["ISIC_0000001", "sex"])
    assert groups.group_labels(frame.reset_index(), "age") == ["45-59", "unknown", "75+"]


def test_ham10000_rows_carry_dx_type(tmp_path):
    from data_factory import make_ham10000

    make_ham10000(tmp_path / "ham")
    table = load_table(tmp_path / "ham")
    assert set(table.frame["dx_type"]) == {"histo"} and groups.resolve_column("dx_type", table.frame) == "dx_type"


@pytest.mark.realdata
def test_isic2017_val_and_test_by_source_and_sex(shared_data, tiny_model_folder, tmp_path):
    """Two ISIC 2017 folders (one source name, two official splits) with the val folder's metadata (~15 s)."""
    out = tmp_path / "isic"
    rc = _evaluate_main()(["--model", str(tiny_model_folder), "--data", str(shared_data / "ISIC2017_val"),
                           str(shared_data / "ISIC2017_test"), "--by", "source", "sex", "--tta", "none",
                           "--bootstrap", "20", "--workers", "2", "--no-progress", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 750 and report["data"]["split"] == "all"
    assert {g["group"]: g["n"] for g in report["by"]["source"]["groups"]} == {"isic2017 (test)": 600,
                                                                            "isic2017 (val)": 150}
    sex = {g["group"]: g["n"] for g in report["by"]["sex"]["groups"]}
    assert sex["male"] + sex["female"] == 149 and sex["unknown"] == 601  # the test folder ships no metadata
