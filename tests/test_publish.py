"""`skinlesion publish`: what a Space receives, dry runs without network, fast failures offline.

No test talks to the Hub: the uploads are checked against a recording stand-in for HfApi, and the
file selection against huggingface_hub's own folder filter.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub
import pytest

from skinlesion import publish
from skinlesion.cli.main import main
from skinlesion.hub import HubUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_S = 10.0  # "fails in seconds": the Hub probe's own timeout is 3 s


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test (a dry run must not touch the network)."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access during a dry run")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token anywhere huggingface_hub looks: env variables unset, HF_HOME an empty folder."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads HF_HOME into its constants at import time, long before this test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connecting is refused at once


def write(path: Path, data: bytes | str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A repository with everything a Space needs and the junk a working copy accumulates."""
    root = tmp_path / "repo"
    wanted = ["app.py", "requirements.txt", "pyproject.toml", "src/skinlesion/__init__.py",
              "src/skinlesion/data/sources.py", "weights/model.safetensors", "weights/config.json",
              "weights/README.md", "weights/split_manifest.csv", "weights/history.png",
              "weights/ood_stats.safetensors", "weights/model.onnx", "weights/eval/test/report.json",
              "examples/lesion_1.png"]
    junk = ["tests/test_app.py", "runs/r18/model.safetensors", ".venv/lib/python3.11/site.py", ".git/config",
            "data/HAM10000_metadata.csv", "src/skinlesion/__pycache__/app_logic.cpython-311.pyc",
            "src/skinlesion.egg-info/PKG-INFO", "weights/checkpoints/last.safetensors",
            "weights/.model.abc123.safetensors", "weights/.DS_Store", "weights/train.log",
            "weights/.model.abc123.onnx", "notes.txt", "app.log", ".ruff_cache/x"]
    for name in wanted + junk:
        write(root / name, f"content of {name}")
    write(root / "README.md", "---\nsdk: gradio\napp_file: app.py\n---\n# demo\n")
    return root


# -- what a Space receives ----------------------------------------------------------------------------
def test_space_files_keep_what_the_app_needs_and_nothing_else(fake_repo: Path):
    files = publish.space_files(fake_repo)
    assert [f.path for f in files] == sorted([
        "README.md", "app.py", "examples/lesion_1.png", "pyproject.toml", "requirements.txt",
        "src/skinlesion/__init__.py", "src/skinlesion/data/sources.py", "weights/README.md",
        "weights/config.json", "weights/eval/test/report.json", "weights/history.png", "weights/model.onnx",
        "weights/model.safetensors", "weights/ood_stats.safetensors", "weights/split_manifest.csv"])
    assert all(f.size == (fake_repo / f.path).stat().st_size for f in files)


def test_space_files_are_exactly_what_upload_folder_uploads(fake_repo: Path, monkeypatch: pytest.MonkeyPatch):
    """The dry-run listing and the real upload use one selection: huggingface_hub's own, on the same patterns."""
    prepare = getattr(huggingface_hub.HfApi, "_prepare_upload_folder_additions", None)
    if prepare is None:
        pytest.skip("this huggingface_hub has no _prepare_upload_folder_additions to compare with")
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS

    # The one network step of this preparation: the Hub validates README.md's front matter.
    monkeypatch.setattr(huggingface_hub.HfApi, "_validate_yaml", lambda self, content, **kwargs: None)

    # upload_folder adds its default ignores itself before this step.
    ops = prepare(huggingface_hub.HfApi(), fake_repo, "", allow_patterns=list(publish.SPACE_ALLOW_PATTERNS),
                  ignore_patterns=[*publish.SPACE_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS], repo_type="space")
    assert sorted(op.path_in_repo for op in ops) == [f.path for f in publish.space_files(fake_repo)]


def test_allow_patterns_start_with_a_literal_top_level_name():
    # space_files walks only these top-level entries; a wildcard there would silently skip files.
    for pattern in publish.SPACE_ALLOW_PATTERNS:
        assert not set(pattern.split("/")[0]) & set("*?["), pattern


def test_space_files_refuse_a_folder_that_is_not_the_app(fake_repo: Path):
    (fake_repo / "requirements.txt").unlink()
    with pytest.raises(publish.PublishError, match="requirements.txt"):
        publish.space_files(fake_repo)
    write(fake_repo / "requirements.txt", "gradio\n")
    write(fake_repo / "README.md", "# no front matter\n")
    with pytest.raises(publish.PublishError, match="front matter"):
        publish.space_files(fake_repo)


def test_dry_run_lists_this_repository_with_sizes_and_no_network(no_network, capsys: pytest.CaptureFixture):
    assert main(["publish", "space", "me/skin-demo", "--model-id", "me/skin-model@v1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].replace(",", "").isdigit():
            listed[parts[1]] = int(parts[0].replace(",", ""))
    for needed in ("app.py", "requirements.txt", "README.md", "src/skinlesion/__init__.py",
                   "src/skinlesion/app/registry.py", "weights/model.safetensors", "weights/config.json"):
        assert listed.get(needed) == (REPO_ROOT / needed).stat().st_size, needed
    assert not [p for p in listed if p.startswith(("tests/", ".venv/", "runs/", ".git/", "data/"))]
    assert not [p for p in listed if p.endswith(".pyc") or "egg-info" in p]
    total_line = next(line for line in out.splitlines() if "total:" in line)
    assert int(total_line.split()[0].replace(",", "")) == sum(listed.values())
    assert f"{len(listed)} files" in total_line
    assert "MODEL_ID=me/skin-model@v1" in out


def test_model_dry_run_lists_the_folder_without_checkpoints(tmp_path: Path, no_network,
                                                            capsys: pytest.CaptureFixture):
    folder = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "README.md", "checkpoints/last.pt", ".model.x.safetensors"):
        write(folder / name)
    assert main(["publish", "model", str(folder), "me/skin-model", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "config.json" in out and "README.md" in out
    assert "checkpoints" not in out and ".model.x" not in out

    (folder / "model.safetensors").unlink()
    assert main(["publish", "model", str(folder), "me/skin-model", "--dry-run"]) == 1
    assert "missing ['model.safetensors']" in capsys.readouterr().err


def test_bad_model_id_is_refused_before_anything_else(no_network, capsys: pytest.CaptureFixture):
    for bad in ("just-a-name", "me/model@", "./weights", "a/b/c"):
        assert main(["publish", "space", "me/skin-demo", "--model-id", bad, "--dry-run"]) == 1, bad
        assert "OWNER/NAME" in capsys.readouterr().err, bad
    assert publish.parse_model_id("me/model@v1.2") == ("me/model", "v1.2")
    assert publish.parse_model_id("me/model") == ("me/model", None)


def test_help_shows_an_example(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        main(["publish", "space", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "skinlesion publish space me/skin-lesion-demo --dry-run" in help_text
    with pytest.raises(SystemExit):
        main(["publish", "--help"])
    assert "skinlesion publish space OWNER/NAME --dry-run" in capsys.readouterr().out


# -- fast, named failures -----------------------------------------------------------------------------
def _deploy_fails(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[str, float]:
    def must_not_run(*args, **kwargs):
        raise AssertionError("HfApi was called although the push cannot succeed")

    for method in ("create_repo", "upload_folder", "add_space_variable", "model_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, method, must_not_run)
    start = time.perf_counter()
    code = main(["publish", "space", "me/skin-demo", "--model-id", "me/skin-model"])
    elapsed = time.perf_counter() - start
    assert code == 1
    return capsys.readouterr().err, elapsed


def test_offline_fails_fast_naming_hf_hub_offline(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # offline wins even with a token
    err, elapsed = _deploy_fails(capsys, monkeypatch)
    assert "HF_HUB_OFFLINE=1" in err and "publish space me/skin-demo" in err
    assert elapsed < FAST_S


def test_no_token_fails_fast_naming_the_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              no_token, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    err, elapsed = _deploy_fails(capsys, monkeypatch)
    assert "no Hugging Face token" in err and "HF_TOKEN" in err
    assert elapsed < FAST_S


def test_unreachable_hub_fails_fast_naming_the_host(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    err, elapsed = _deploy_fails(capsys, monkeypatch)
    assert f"127.0.0.1:{port} is unreachable" in err
    assert elapsed < FAST_S


def test_training_push_check_keeps_its_messages(monkeypatch: pytest.MonkeyPatch):
    # train.py --push-to-hub calls check_can_push(repo_id) at start-up; its messages name that flag.
    with pytest.raises(ValueError, match="--push-to-hub not-a-repo: .*owner/name"):
        publish.check_can_push("not-a-repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="--push-to-hub me/model.*HF_HUB_OFFLINE"):
        publish.check_can_push("me/model")


# -- what a deploy sends (recorded, not sent) ---------------------------------------------------------
class RecordingApi:
    calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            RecordingApi.calls.append((name, args, kwargs))
        return record


@pytest.mark.parametrize("model_id", ["me/skin-model@v2", None])
def test_deploy_creates_a_gradio_space_uploads_the_selection_and_sets_model_id(
        fake_repo: Path, monkeypatch: pytest.MonkeyPatch, model_id: str | None):
    checked = []
    monkeypatch.setattr(publish, "check_can_push", lambda repo_id, what: checked.append(what))
    monkeypatch.setattr(publish, "check_model_on_hub", lambda mid: checked.append(mid) and False)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []

    url = publish.deploy_space("me/skin-demo", model_id=model_id, root=fake_repo)

    assert url == "https://huggingface.co/spaces/me/skin-demo"
    assert checked == ["publish space me/skin-demo"] + ([model_id] if model_id else [])
    by_name = {name: (args, kwargs) for name, args, kwargs in RecordingApi.calls}
    args, kwargs = by_name["create_repo"]
    assert args == ("me/skin-demo",) and kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio"
    assert kwargs["exist_ok"] is True and kwargs["private"] is False
    _, kwargs = by_name["upload_folder"]
    assert kwargs["repo_id"] == "me/skin-demo" and kwargs["repo_type"] == "space"
    assert Path(kwargs["folder_path"]) == fake_repo
    assert kwargs["allow_patterns"] == list(publish.SPACE_ALLOW_PATTERNS)
    assert kwargs["ignore_patterns"] == list(publish.SPACE_IGNORE_PATTERNS)
    if model_id is None:
        assert "add_space_variable" not in by_name  # an existing MODEL_ID is left alone
    else:
        assert by_name["add_space_variable"][0] == ("me/skin-demo", "MODEL_ID", model_id)
    assert [name for name, *_ in RecordingApi.calls].index("create_repo") == 0
