"""A Hugging Face Space's build and start, reproduced on this machine.

A Space runs `pip install -r requirements.txt` in an empty folder (only that file is mounted), copies
the repository's files in afterwards, and starts `python app.py` with GRADIO_SERVER_NAME/PORT set; it
never runs `pip install -e .`. The slow test does exactly that in a fresh venv and calls /predict.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import synthetic_lesion

from skinlesion import app as logic
from skinlesion.bench.app import free_port, stop, wait_until_serving
from skinlesion.publish import space_files

REPO_ROOT = Path(__file__).resolve().parents[1]
# Installing torch 2.14.1 (~5.5 GB, from this machine's disk) and the rest (from pip's cache after
# the first run) takes minutes on 2 busy cores; the first run downloads Gradio & co. as well.
INSTALL_TIMEOUT_S = 2400
START_TIMEOUT_S = 600


def space_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak our venv or our model choice into the Space."""
    leaks = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MODEL_ID", "EXAMPLES_DATASET", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    env.update(extra)
    return env


def run_logged(cmd: list[str], *, cwd: Path, log: Path, timeout: float, env: dict[str, str]) -> None:
    with log.open("ab") as out:
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"{' '.join(cmd)} (in {cwd}) exited with {result.returncode}:\n{tail}")


def test_app_py_finds_the_package_in_src_when_it_is_not_installed(tmp_path: Path):
    """The bootstrap at the top of app.py, without a Space: the installed (editable) package is hidden."""
    app_dir = tmp_path / "space"
    for f in space_files(REPO_ROOT):
        if f.path == "app.py" or f.path.startswith("src/"):
            (app_dir / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / f.path, app_dir / f.path)
    probe = textwrap.dedent("""
        import importlib.util, runpy, sys
        from pathlib import Path
        hidden = Path(sys.argv[1]).resolve()
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != hidden]
        assert importlib.util.find_spec("skinlesion") is None, "skinlesion is still importable"
        runpy.run_path(sys.argv[2])  # not __main__: defines build_demo & co. without starting a server
        import skinlesion.app.callbacks
        print(skinlesion.app.callbacks.__file__)
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(REPO_ROOT / "src"), str(app_dir / "app.py")],
                            cwd=tmp_path, env=space_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip().splitlines()[-1]) == app_dir / "src" / "skinlesion" / "app" / "callbacks.py"


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + START_TIMEOUT_S + 300)
def test_space_builds_from_requirements_alone_and_answers_predict(tmp_path: Path):
    from gradio_client import Client, handle_file

    log = tmp_path / "build.log"
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = space_env(PIP_PROGRESS_BAR="off", PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        # 1. A fresh venv: nothing from this one (no system site-packages, no skinlesion).
        run_logged([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, log=log, timeout=300, env=env)
        assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()

        # 2. requirements.txt installed from an empty folder holding only that file, as a Space mounts it.
        # pip's own cache (~/.cache/pip) and this machine's local torch wheels make reruns fast.
        build = tmp_path / "build"
        build.mkdir()
        shutil.copy2(REPO_ROOT / "requirements.txt", build / "requirements.txt")
        started = time.perf_counter()
        run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", "requirements.txt"],
                   cwd=build, log=log, timeout=INSTALL_TIMEOUT_S, env=env)
        install_s = time.perf_counter() - started
        not_installed = subprocess.run([str(python), "-c", "import skinlesion"], cwd=build, env=env,
                                       capture_output=True, timeout=120)
        assert not_installed.returncode != 0, "requirements.txt installed skinlesion itself (-e . or a path)"

        # 3. The repository's files, as the deploy command selects them, in another folder.
        app_dir = tmp_path / "app"
        for f in space_files(REPO_ROOT):
            (app_dir / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / f.path, app_dir / f.path)
        assert not (app_dir / "tests").exists() and not (app_dir / ".venv").exists()
        label_names = json.loads((app_dir / "weights" / "config.json").read_text())["label_names"]

        # 4. `python app.py` as the Space starts it: server address from the environment, Hub offline.
        port = free_port()
        app_log = tmp_path / "app.log"
        with app_log.open("wb") as out:
            proc = subprocess.Popen([str(python), "app.py"], cwd=app_dir, stdout=out, stderr=subprocess.STDOUT,
                                    env={**env, "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
                                         "HF_HUB_OFFLINE": "1"})
        url = f"http://127.0.0.1:{port}/"
        try:
            start_s = wait_until_serving(url, proc, timeout=START_TIMEOUT_S)
            page = httpx.get(url + "config", timeout=60).text
            assert "Serving shipped model" in page and "shipped `weights/` folder" in page

            image = tmp_path / "lesion.png"
            synthetic_lesion(5, size=(300, 225), label=4).save(image)
            client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
            outputs = client.predict(handle_file(str(image)), api_name="/predict")
        finally:
            stop(proc)
        assert len(outputs) == 8
        label = outputs[0]
        assert label["label"] in {logic.label_key(c) for c in label_names}
        assert {c["label"] for c in label["confidences"]} <= {logic.label_key(c) for c in label_names}
        app_text = app_log.read_text(errors="replace")
        assert "Traceback" not in app_text, app_text[-3000:]
        print(f"Space build: pip install {install_s:.0f} s, app serving after {start_s:.0f} s")
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~5.5 GB: not kept among pytest's last three tmp dirs


# -- the Space measurement (skinlesion bench app --space) -----------------------------------
def test_process_memory_reads_this_process_and_refuses_a_missing_one():
    from skinlesion.bench.app import process_memory_mb

    memory = process_memory_mb(os.getpid())
    assert 10 < memory["rss_mb"] <= memory["peak_rss_mb"]
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    with pytest.raises(RuntimeError, match=f"/proc/{finished.pid}/status"):
        process_memory_mb(finished.pid)


@pytest.mark.slow
def test_bench_space_reports_cold_start_and_memory_of_the_shipped_app():
    from skinlesion.bench.app import SPACE_GOALS, SpaceBenchConfig, run_space

    if not (REPO_ROOT / "weights" / "config.json").is_file():
        pytest.fail("weights/ holds no shipped model: the Space measurement needs one")
    result = run_space(SpaceBenchConfig(requests=3, width=300, height=225))
    assert 0 < result["server_ready_s"] <= result["cold_start_s"]
    assert 100 < result["rss_mb_after_first_request"] and 100 < result["rss_mb"] <= result["peak_rss_mb"]
    assert result["requests"] == 3 and result["median_request_s"] > 0
    assert result["serves"] == json.loads((REPO_ROOT / "weights" / "config.json").read_text())["architecture"]
    assert result["within_goals"] == (result["cold_start_s"] <= SPACE_GOALS["cold_start_s"]
                                      and result["rss_mb"] <= SPACE_GOALS["rss_mb"])
