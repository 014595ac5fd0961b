"""`skinlesion data describe|split`, called in-process (and once through `python -m skinlesion`)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
from data_factory import make_ham10000, make_imagefolder

from skinlesion.cli.main import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_prints_layout_counts_groups_and_problems(tmp_path: Path, capsys) -> None:
    expected = make_ham10000(tmp_path)
    code, out, _ = run(capsys, "describe", tmp_path)
    assert code == 0
    report = json.loads(out)
    assert report["layout"] == "ham10000"
    assert report["n_images"] == expected["n_images"]
    assert report["classes"] == dict(sorted(expected["classes"].items()))
    assert report["n_groups"] == expected["n_groups"]
    assert report["problems"] == []
    assert report["counters"]["unreadable_images"] == 0  # --verify is the default


def test_describe_reports_bad_files_instead_of_crashing(tmp_path: Path, capsys) -> None:
    make_ham10000(tmp_path, kaggle_parts=False)
    (tmp_path / "images" / "ISIC_0000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "images" / "ISIC_0000005.jpg").unlink()
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text().replace("ISIC_0000010,df", "ISIC_0000010,???"))
    (tmp_path / "duplicate_lesion_pairs.csv").write_text("garbage\n")
    code, out, _ = run(capsys, "describe", tmp_path)
    assert code == 0
    report = json.loads(out)
    assert report["n_images"] == 9
    assert report["counters"] == {"missing_images": 1, "unknown_labels": 1, "bad_rows": 0, "unreadable_images": 1}
    problems = "\n".join(report["problems"])
    for needle in ("ISIC_0000001.jpg", "'ISIC_0000005' not found", "unknown label '???'",
                   "duplicate_lesion_pairs.csv"):
        assert needle in problems


def test_describe_merges_duplicate_pairs_and_no_verify(tmp_path: Path, capsys) -> None:
    make_ham10000(tmp_path)
    # ISIC_0000003 is lesion 2, ISIC_0000005 lesion 3: one pair joins two lesions.
    (tmp_path / "duplicate_lesion_pairs.csv").write_text("similarity,from_img,to_img\n0.99,ISIC_0000003.jpg,"
                                                         "ISIC_0000005.jpg\n")
    code, out, _ = run(capsys, "describe", tmp_path, "--no-verify")
    report = json.loads(out)
    assert code == 0 and "unreadable_images" not in report["counters"]
    assert report["n_groups_after_merging_duplicates"] == report["n_groups"] - 1


def test_describe_with_layout_override_and_label_map(tmp_path: Path, capsys) -> None:
    make_imagefolder(tmp_path)
    code, out, _ = run(capsys, "describe", tmp_path, "--layout", "imagefolder",
                       "--label-map", "common_nevus=nv,atypical_nevus=nv,melanoma=mel")
    report = json.loads(out)
    assert code == 0 and report["layout"] == "imagefolder"
    assert report["classes"] == {"mel": 2, "nv": 5}


def test_split_writes_a_manifest(tmp_path: Path, capsys) -> None:
    make_ham10000(tmp_path / "ham")
    out_csv = tmp_path / "out" / "manifest.csv"
    code, out, _ = run(capsys, "split", tmp_path / "ham", "--val", "0.1", "--test", "0.1", "--seed", "0",
                       "--out", out_csv)
    assert code == 0
    manifest = pd.read_csv(out_csv, dtype=str)
    assert list(manifest.columns) == ["image_id", "split"]
    meta = pd.read_csv(tmp_path / "ham" / "HAM10000_metadata.csv", dtype=str)
    assert sorted(manifest["image_id"]) == sorted(meta["image_id"])
    joined = meta.merge(manifest, on="image_id")
    assert joined.groupby("lesion_id")["split"].nunique().max() == 1
    assert json.loads(out)["splits"] == manifest["split"].value_counts().to_dict()


@pytest.mark.parametrize("argv,message", [
    (["describe", "{tmp}/does_not_exist"], "does_not_exist: no such file or folder"),
    (["split", "{tmp}/does_not_exist", "--out", "{tmp}/m.csv"], "no such file or folder"),
    (["describe", "{tmp}", "--label-map", "melanoma"], "is not SRC=DST"),
    (["split", "{ham}", "--val", "0.6", "--test", "0.6", "--out", "{tmp}/m.csv"], "must be fractions"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    make_ham10000(tmp_path / "ham")
    code, out, err = run(capsys, *(a.format(tmp=tmp_path, ham=tmp_path / "ham") for a in argv))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_hub_id_offline_exits_2(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "describe", "someone/ham10000")
    assert code == 2 and "HF_HUB_OFFLINE=1" in err


def test_module_entry_point_exit_code(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m skinlesion data` without a new interpreter (which would spend ~10 s importing torch).
    monkeypatch.setattr(sys, "argv", ["python -m skinlesion", "data", "describe", str(tmp_path / "missing")])
    monkeypatch.delitem(sys.modules, "skinlesion.__main__", raising=False)  # run it fresh, as python -m does
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("skinlesion", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
