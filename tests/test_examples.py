"""The app's committed examples: small, licensed, listed, and never from the validation or test split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from skinlesion.app.examples import example_images, example_labels
from skinlesion.data import read_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MANIFEST = ROOT / "weights" / "split_manifest.csv"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with (EXAMPLES / "examples.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_example_image_is_listed_with_a_licence(rows):
    images = example_images(EXAMPLES)
    readme = (EXAMPLES / "README.md").read_text()
    assert 2 <= len(images) <= 8
    assert {p.name for p in images} == {r["file"] for r in rows}
    for row in rows:
        assert row["licence"] and row["attribution"], row["file"]
        line = next((ln for ln in readme.splitlines() if f"`{row['file']}`" in ln), None)
        assert line is not None, f"{row['file']} is not in examples/README.md"
        assert row["licence"] in line


def test_examples_are_small(rows):
    for row in rows:
        assert (EXAMPLES / row["file"]).stat().st_size <= 60_000, row["file"]


def test_no_example_comes_from_the_validation_or_test_split(rows):
    split_of = dict(zip(*[read_manifest(MANIFEST)[c] for c in ("image_id", "split")], strict=True))
    ham = [r for r in rows if r["image_id"]]
    assert ham, "no HAM10000 example"
    for row in ham:
        assert split_of.get(row["image_id"]) == "train", f"{row['file']}: {row['image_id']} is not a train image"
        assert row["image_id"] in row["file"]


def test_one_example_per_class_and_one_that_is_not_a_lesion(rows):
    labels = [r["true_label"] for r in rows if r["true_label"]]
    assert len(labels) == len(set(labels))  # one per class
    assert sum(1 for r in rows if not r["true_label"]) == 1
    # Honest examples: at least one the shipped model gets wrong or is unsure about.
    assert any(r["model_label"] != r["true_label"] or float(r["model_confidence"] or 1) < 0.6
               for r in rows if r["true_label"])


def test_labels_show_the_true_diagnosis(rows):
    labels = example_labels(example_images(EXAMPLES))
    by_file = dict(zip([p.name for p in example_images(EXAMPLES)], labels, strict=True))
    for row in rows:
        assert row["true_diagnosis"].lower() in by_file[row["file"]].lower()


def test_labels_fall_back_to_file_names_without_a_csv(tmp_path):
    from conftest import synthetic_lesion

    synthetic_lesion(0).save(tmp_path / "my_lesion.png")
    assert example_labels(example_images(tmp_path)) == ["my_lesion"]
