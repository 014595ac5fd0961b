"""The model card follows the Hub's conventions (front matter the Hub parses into eval results), names every
training source with its licence and citation, and shows the per-group tables of the folder's eval reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skinlesion.models.card import render_model_card

LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _folder(tmp_path: Path, sources: list[dict] | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    extras = {"temperature": 1.2, "tta": "flips", "manifest_sha256": "ab" * 32,
              "calibration": {"tta": "flips", "ece_before": 0.1, "ece_after": 0.05},
              **({"sources": sources} if sources is not None else {})}
    (folder / "config.json").write_text(json.dumps({"architecture": "lesion_cnn", "label_names": LABELS,
                                                    "pretrained_cfg": {"input_size": [3, 64, 64]},
                                                    "skinlesion": extras}))
    (folder / "split_manifest.csv").write_text("image_id,split\na,train\nb,train\nc,val\nd,test\n")
    group = {"n": 120, "n_per_class": {"mel": 20, "nv": 100}, "n_malignant": 20, "balanced_accuracy": 0.7,
             "melanoma_auc": 0.81, "malignant_sensitivity": 0.55, "malignant_specificity": 0.9,
             "ci95": {"melanoma_auc": [0.7, 0.9], "malignant_sensitivity": [0.3, 0.75]}, "notes": []}
    reports = {
        "ham10000_test": {"command": "python evaluate.py --model m --data HAM --by sex source --out m/eval/ham10000_test",
                          "data": {"layout": "ham10000", "split": "test", "path": "HAM"},
                          "n_images": 140, "balanced_accuracy": 0.71234, "balanced_accuracy_ci95": [0.6, 0.8],
                          "accuracy": 0.8, "auc_ovr_macro": 0.9, "malignant_auc": 0.88, "ece": 0.04, "ece_before": 0.05,
                          "ece_after": 0.04, "per_class": {"mel": {"recall": 0.6, "support": 20, "auc": 0.83456}},
                          "melanoma": {"sensitivity": 0.6, "auc_against": {"nv": 0.8}},
                          "by": {"sex": {"asked_as": "sex", "groups": [
                              {"group": "female", **group},
                              {"group": "male", **group, "malignant_sensitivity": 0.8},
                              {"group": "unknown", "n": 20, "n_per_class": {"nv": 20}, "n_malignant": 0,
                               "balanced_accuracy": None, "melanoma_auc": None, "malignant_sensitivity": None,
                               "malignant_specificity": None, "ci95": {}, "notes": ["too small to say anything"]}]},
                                 "source": {"asked_as": "source", "groups": [{"group": "ham10000", **group}]}}},
        "isic2017_test": {"command": "python evaluate.py --model m --data ISIC2017_test --by source --out x",
                          "data": {"layout": "isic2017", "split": "all", "path": "../ISIC2017_test"},
                          "n_images": 600, "balanced_accuracy": 0.6, "accuracy": 0.7, "auc_ovr_macro": 0.7,
                          "malignant_auc": 0.66, "ece": 0.06, "per_class": {"mel": {"recall": 0.2, "support": 117,
                                                                                    "auc": 0.6}},
                          "by": {"source": {"asked_as": "source", "groups": [{"group": "isic2017", **group,
                                                                             "n": 600}]}}},
    }
    for name, report in reports.items():
        (folder / "eval" / name).mkdir(parents=True)
        (folder / "eval" / name / "report.json").write_text(json.dumps(report))
    return folder


def test_front_matter_is_a_hub_model_index(tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard(render_model_card(_folder(tmp_path)))
    assert card.data.license == "cc-by-nc-sa-4.0" and card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["HAM10000"]
    results = {(r.dataset_name, r.metric_name): r for r in card.data.eval_results}
    ham = results[("HAM10000 test split", "Balanced accuracy")]
    assert ham.metric_value == 0.7123 and ham.dataset_type == "ham10000" and ham.dataset_split == "test"
    assert ham.task_type == "image-classification"
    assert results[("HAM10000 test split", "Melanoma AUC (one-vs-rest)")].metric_value == 0.8346
    assert results[("ISIC 2017 ISIC2017_test", "Balanced accuracy")].metric_value == 0.6


def test_body_has_the_sections_and_per_group_tables_but_no_internal_floors(tmp_path):
    text = render_model_card(_folder(tmp_path))
    for heading in ("## Model details", "## Intended use", "## Out-of-scope use", "## Training data",
                    "## Evaluation", "### Calibration", "### Where it fails: per group", "## Limitations",
                    "## Licence and citation"):
        assert f"\n{heading}\n" in text, heading
    assert "Quality bars" not in text and "floor" not in text.lower()
    assert "#### HAM10000 test split by sex" in text and "| female | 120 | 20 / 20 | 0.700 |" in text
    # One per-source table across both reports, each row named by dataset and test set.
    per_source = text.split("#### Per source", 1)[1]
    assert "| HAM10000 (HAM10000 test split) | 120 |" in per_source
    assert "| ISIC 2017 (ISIC 2017 `ISIC2017_test`) | 600 |" in per_source
    # Limitations name the spread across groups and the groups too small to measure.
    assert "malignant sensitivity from 0.55 (female: 20 malignant of 120) to 0.80 (male: 20 malignant of 120)" in text
    assert "python evaluate.py --model m --data HAM --by sex source" in text  # the command beside the tables
    assert "Tschandl" in text and "Tested also on ISIC 2017" in text and "arXiv:1710.05006" in text


def test_sources_from_the_config_with_their_licences(tmp_path):
    from huggingface_hub import ModelCard

    sources = [{"name": "ham10000", "path": "../shared/data/HAM10000", "layout": "ham10000",
                "split_rule": "lesion-grouped", "n_images": 10015, "classes": {"mel": 1113, "nv": 6705},
                "per_split": {"train": {"mel": 900, "nv": 5000}, "val": {"mel": 100}}},
               {"name": "isic2017", "path": "../shared/data/ISIC2017_train", "layout": "isic2017",
                "split_rule": "official (train)", "n_images": 2000, "classes": {"mel": 374, "bkl": 254, "nv": 1372}},
               {"name": "isic2017", "path": "../shared/data/ISIC2017_val", "layout": "isic2017",
                "split_rule": "official (val)", "n_images": 150, "classes": {"mel": 30, "bkl": 42, "nv": 78}}]
    text = render_model_card(_folder(tmp_path, sources))
    card = ModelCard(text)
    assert card.data.datasets == ["HAM10000", "ISIC-2017"]
    assert card.data.license == "cc-by-nc-sa-4.0"  # the most restrictive of the sources' terms
    assert "| ISIC 2017 (`../shared/data/ISIC2017_train`) | 2000 | mel 374, bkl 254, nv 1372 | official (train) | " \
           "ISIC Archive terms" in text
    assert "| ham10000 | train | 5900 | mel 900, nv 5000 |" in text
    assert "Tested also on ISIC 2017" not in text  # trained on it: cited once, as training data
    assert text.count("arXiv:1710.05006") == 1
    # ISIC 2017's train and val folders are two rows of the table but one dataset: its origin and terms once.
    assert "| ISIC 2017 (`../shared/data/ISIC2017_val`) | 150 |" in text
    assert text.count("- Trained on ISIC 2017,") == 1 and text.count("- ISIC 2017: ") == 1


@pytest.mark.parametrize("unknown", [{"name": "clinic_b", "layout": "imagefolder"}])
def test_an_unknown_source_makes_the_licence_other_and_says_so(tmp_path, unknown):
    from huggingface_hub import ModelCard

    text = render_model_card(_folder(tmp_path, [{"name": "ham10000", "layout": "ham10000"}, unknown]))
    card = ModelCard(text)
    assert card.data.license == "other" and card.data.license_name == "dataset-terms"
    assert "Trained on `clinic_b`: check that dataset's own terms" in text
