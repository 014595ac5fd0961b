"""`skinlesion predict` and `skinlesion explain`: folder prediction to CSV, explanation PNGs + JSON; the inference benchmark."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.bench import inference as bench_inference
from skinlesion.cli.main import main as skinlesion
from skinlesion.inference import explain_images, predict_folder
from skinlesion.inference.predictor import Predictor


@pytest.fixture
def image_dir(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    synthetic_lesion(0, size=(120, 90)).save(root / "a.jpg")
    synthetic_lesion(1, size=(90, 120), label=2).save(root / "b.png")
    synthetic_lesion(2, size=(100, 100), label=5).save(root / "sub" / "c.jpg")
    (root / "notes.txt").write_text("not an image, and not picked up")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predict_folder_writes_one_row_per_image(tiny_model_folder, image_dir, tmp_path):
    out = tmp_path / "preds.csv"
    code = skinlesion(["predict", "--model", str(tiny_model_folder), "--images", str(image_dir), "--out", str(out),
                         "--batch-size", "2", "--no-progress"])
    assert code == 0
    rows = read_csv(out)
    assert [r["path"] for r in rows] == ["a.jpg", "b.png", "sub/c.jpg"]
    assert list(rows[0]) == predict_folder.csv_columns(["bkl", "mel", "nv"])
    reference = Predictor.from_pretrained(tiny_model_folder).predict(image_dir / "b.png")
    assert rows[1]["label"] == reference.label
    assert float(rows[1]["prob_mel"]) == pytest.approx(reference.probs["mel"], abs=1e-5)
    for row in rows:
        assert sum(float(row[f"prob_{n}"]) for n in ["bkl", "mel", "nv"]) == pytest.approx(1.0, abs=1e-4)
        assert row["error"] == ""


def test_predict_folder_stops_on_a_bad_file_unless_skip_bad(tiny_model_folder, image_dir, tmp_path, capsys):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "preds.csv"
    args = ["--model", str(tiny_model_folder), "--images", str(image_dir), "--out", str(out), "--no-progress"]
    assert skinlesion(["predict", *args]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))  # no half-written CSV
    assert skinlesion(["predict", *args, "--skip-bad"]) == 0
    rows = {r["path"]: r for r in read_csv(out)}
    assert len(rows) == 4
    assert "broken.jpg" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["label"] == ""
    assert rows["a.jpg"]["error"] == "" and rows["a.jpg"]["label"] in {"bkl", "mel", "nv"}


def test_explain_cli_writes_overlays_and_json(tiny_model_folder, image_dir, tmp_path):
    out = tmp_path / "explained"
    images = [image_dir / "a.jpg", image_dir / "b.png"]
    code = skinlesion(["explain", "--model", str(tiny_model_folder), "--image", *map(str, images), "--out", str(out),
                         "--method", "gradcam++", "--tta", "none", "--alpha", "0.3"])
    assert code == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert [Path(e["image"]).name for e in entries] == ["a.jpg", "b.png"]
    for entry, image in zip(entries, images, strict=True):
        assert entry["method"] == "gradcam++" and entry["prediction"]["tta"] == "none"
        assert Image.open(entry["overlay"]).size == Image.open(image).size


def test_explain_cli_compares_models_side_by_side(tiny_model_folder, image_dir, tmp_path):
    second = tmp_path / "second_model"
    shutil.copytree(tiny_model_folder, second)
    out = tmp_path / "compare"
    code = skinlesion(["explain", "--models", str(tiny_model_folder), str(second), "--image", str(image_dir / "a.jpg"),
                         "--out", str(out), "--target", "mel"])
    assert code == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert [e["model"] for e in entries] == [str(tiny_model_folder), str(second)]
    assert all(e["target_label"] == "mel" for e in entries)
    comparison = Image.open(entries[0]["comparison"])
    assert comparison.width > 3 * comparison.height  # input + two overlays, side by side
    assert list(out.glob("*.png")) == [Path(entries[0]["comparison"])]


def test_explain_cli_rejects_a_bad_image_before_writing(tiny_model_folder, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "out"
    assert skinlesion(["explain", "--model", str(tiny_model_folder), "--image", str(bad), "--out", str(out)]) == 1
    assert "bad.png" in capsys.readouterr().err and not out.exists()


def test_unique_stems_never_collide():
    assert explain_images.unique_stems([Path("a/x.jpg"), Path("b/x.png"), Path("y.jpg")]) == ["x", "x_2", "y"]


def test_bench_inference_reports_every_variant_and_path_as_ratios(tiny_model_folder):
    report = bench_inference.run(bench_inference.InferenceBenchConfig(
        str(tiny_model_folder), repeats=1, warmup=0, images=3, batch_size=2, workers=0, app=False))
    # No model.onnx in the tiny folder: PyTorch channels_last serves, and the report says why.
    assert report["variant"] == "channels_last" and "model.onnx" in report["variant_note"]
    bare = report["bare_forward"]
    assert set(bare["views_per_s"]) == {"eager", "channels_last"} and bare["batch_views"] == 8
    assert max(bare["over_fastest"].values()) == 1.0
    assert set(report["paths"]) == {"request", "predict", "evaluate"}
    assert all(path["share_of_bare"] > 0 for path in report["paths"].values())
    assert report["paths"]["predict"]["images"] == 3 and report["views"] == 4
    assert report["request_variants"]["over_eager"]["eager"] == 1.0
    json.dumps(report)
