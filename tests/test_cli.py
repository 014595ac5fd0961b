"""The `skinlesion` command: every subcommand's --help says what it does and ends with an example, each
subcommand runs for real on tiny data made here, and every command the README shows parses."""

from __future__ import annotations

import importlib
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import synthetic_lesion
from fitted_folder import write_synthetic_ham, write_tiny_model

from skinlesion.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]

# Every subcommand and sub-subcommand; a new command must be added here (checked below).
HELP_PATHS = [
    ("predict",), ("explain",), ("export",), ("export", "onnx"), ("ensemble",), ("fit-features",),
    ("data",), ("data", "describe"), ("data", "split"), ("publish",), ("publish", "space"), ("publish", "model"),
    ("bench",), ("bench", "train"), ("bench", "inference"), ("bench", "app"),
]


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- --help ---------------------------------------------------------------------------------------------
def test_every_command_is_covered_here():
    assert {path[0] for path in HELP_PATHS} == set(COMMANDS)


@pytest.mark.parametrize("path", HELP_PATHS, ids=" ".join)
def test_help_says_what_it_does_and_shows_an_example(path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    command = "skinlesion " + " ".join(path)
    assert out.startswith(f"usage: {command}")
    usage, _, rest = out.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert len(description) > 40, "the help should say what the command does"
    assert re.search(r"^examples?:$", out, re.MULTILINE), "the help should end with an example"
    examples = out[re.search(r"^examples?:$", out, re.MULTILINE).end():]
    assert f"  {command} " in examples


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.summary[:30] in out
    assert "examples:" in out


@pytest.mark.parametrize("argv", [[], ["nonsense"]])
def test_no_or_unknown_command_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m_skinlesion_is_the_same_command(monkeypatch, capsys):
    # In-process (a new interpreter would spend seconds importing); `python -m skinlesion --help`.
    monkeypatch.setattr(sys, "argv", ["python -m skinlesion", "--help"])
    monkeypatch.delitem(sys.modules, "skinlesion.__main__", raising=False)
    with pytest.raises(SystemExit) as info:
        runpy.run_module("skinlesion", run_name="__main__", alter_sys=True)
    assert info.value.code == 0 and "fit-features" in capsys.readouterr().out


def test_the_console_script_is_declared_and_resolves_to_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["skinlesion"].partition(":")
    assert getattr(importlib.import_module(module), function) is main


# -- one real invocation each, on tiny data ------------------------------------------------------------
@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    synthetic_lesion(0, (120, 90)).save(root / "a.jpg")
    synthetic_lesion(1, (90, 120), label=2).save(root / "b.png")
    return root


def test_predict(tiny_model_folder, images, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    code, stdout, _ = run(capsys, "predict", "--model", tiny_model_folder, "--images", images, "--out", out,
                          "--no-progress", "--workers", "1")
    assert code == 0 and json.loads(stdout)["predicted"] == 2
    assert out.read_text().count("\n") == 3  # header + one row per image


def test_explain(tiny_model_folder, images, tmp_path, capsys):
    out = tmp_path / "cams"
    code, stdout, _ = run(capsys, "explain", "--model", tiny_model_folder, "--image", images / "a.jpg", "--out", out,
                          "--tta", "none")
    assert code == 0 and "a.jpg" in stdout
    assert (out / "a_gradcam.png").is_file() and (out / "predictions.json").is_file()


def test_export(tiny_model_folder, capsys):
    pytest.importorskip("onnxruntime")
    code, stdout, _ = run(capsys, "export", "onnx", "--model", tiny_model_folder)
    assert code == 0 and json.loads(stdout)["same_top1"]
    assert (tiny_model_folder / "model.onnx").is_file()


def test_data_describe_and_split(tmp_path, capsys):
    data = tmp_path / "ham"
    write_synthetic_ham(data, n=30)
    code, stdout, _ = run(capsys, "data", "describe", data, "--no-verify")
    assert code == 0 and json.loads(stdout)["n_images"] == 30
    manifest = tmp_path / "manifest.csv"
    code, stdout, _ = run(capsys, "data", "split", data, "--val", "0.2", "--test", "0.2", "--out", manifest)
    assert code == 0 and set(json.loads(stdout)["splits"]) == {"train", "val", "test"}
    assert manifest.read_text().startswith("image_id,split\n")


def test_fit_features_records_its_command(tmp_path, capsys):
    folder = write_tiny_model(tmp_path / "model")
    data = tmp_path / "ham"
    split_of = write_synthetic_ham(data, n=30)
    (folder / "split_manifest.csv").write_text(
        "image_id,split\n" + "\n".join(f"{i},{s}" for i, s in split_of.items()) + "\n")
    argv = ["fit-features", "--model", folder, "--data", data, "--workers", "0", "--no-progress",
            "--index-dims", "4", "--ood-quantile", "0.1"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0, stdout
    assert (folder / "ood_stats.safetensors").is_file() and (folder / "case_index.safetensors").is_file()
    extras = json.loads((folder / "config.json").read_text())["skinlesion"]
    assert extras["ood_detector"]["command"] == shlex.join(["skinlesion", *map(str, argv)])


def test_publish_dry_runs_without_network(tiny_model_folder, capsys):
    code, stdout, _ = run(capsys, "publish", "model", tiny_model_folder, "me/skin-model", "--dry-run")
    assert code == 0 and "model.safetensors" in stdout and "total:" in stdout
    code, stdout, _ = run(capsys, "publish", "space", "me/skin-demo", "--dry-run")
    assert code == 0 and "app.py" in stdout and "src/skinlesion/cli/main.py" in stdout


def test_bench_train(capsys):
    code, stdout, _ = run(capsys, "bench", "train", "--model", "lesion_cnn", "--image-size", "32", "--batch-size",
                          "8", "--steps", "1", "--warmup", "0", "--images", "48", "--workers", "0")
    assert code == 0 and json.loads(stdout)["ratio"] > 0


# -- the README's spelling -----------------------------------------------------------------------------
README_COMMAND = re.compile(r"^\s+(?:nice -n 19 )?(skinlesion [^#]+?)\s*(?:#.*)?$")


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # the README and the docs/ pages it links


def readme_commands() -> list[str]:
    # A command continued with a trailing backslash is one command.
    text = re.sub(r"\\\n\s*", " ", "\n".join(path.read_text() for path in DOCS))
    return [m.group(1) for line in text.splitlines() if (m := README_COMMAND.match(line))]


def test_readme_shows_every_command_in_the_new_spelling():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert shown == set(COMMANDS)
    for path in [*DOCS, REPO / "weights" / "README.md", REPO / "weights" / "train_summary.json",
                 *REPO.glob("scripts/*.py"), *REPO.glob("src/**/*.py"), REPO / "app.py", REPO / "evaluate.py"]:
        assert "python -m skinlesion." not in path.read_text(), f"{path} still shows the old spelling"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    # Optional parts the README shows in brackets are dropped; everything else must be a valid call.
    argv = [t for t in shlex.split(re.sub(r"\[[^\]]*\]", "", command))][1:]
    module = importlib.import_module(f"skinlesion.cli.{COMMANDS[argv[0]].module}")
    module.build_parser(f"skinlesion {argv[0]}").parse_args(argv[1:])
