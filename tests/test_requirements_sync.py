"""requirements.txt (what a Space and `python app.py` install) and pyproject.toml must not drift.

pyproject.toml's [project] dependencies plus its `app` extra are the source of truth; requirements.txt
lists exactly those names, with the same specifiers, except pins (==) that the source allows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
REPO_ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def by_name(requirements: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    names = [canonicalize_name(r.name) for r in parsed]
    assert len(names) == len(set(names)), f"a requirement is listed twice: {sorted(names)}"
    return dict(zip(names, parsed, strict=True))


def runtime_sources() -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return by_name([*project["dependencies"], *project["optional-dependencies"]["app"]])


def pinned_version(spec: SpecifierSet) -> str | None:
    items = list(spec)
    return items[0].version if len(items) == 1 and items[0].operator == "==" else None


def test_requirements_txt_installs_from_any_folder():
    # A Space installs it before the repo is copied in: `-e .`, paths and pip options cannot work there.
    for line in requirement_lines(REPO_ROOT / "requirements.txt"):
        assert not line.startswith("-"), f"requirements.txt: {line!r} is a pip option (e.g. -e .)"
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            raise AssertionError(f"requirements.txt: {line!r} is not a plain requirement ({err})") from err
        assert req.url is None, f"requirements.txt: {line!r} points at a URL or path"


def test_requirements_txt_matches_pyproject_dependencies_and_app_extra():
    source = runtime_sources()
    listed = by_name(requirement_lines(REPO_ROOT / "requirements.txt"))
    assert sorted(set(source) - set(listed)) == [], "in pyproject.toml but missing from requirements.txt"
    assert sorted(set(listed) - set(source)) == [], "in requirements.txt but not in pyproject.toml's dependencies/app"
    for name, req in listed.items():
        wanted = source[name].specifier
        pin = pinned_version(req.specifier)
        if pin is not None:
            assert wanted.contains(pin, prereleases=True), f"{name}=={pin} violates pyproject's {name}{wanted}"
        else:
            assert req.specifier == wanted, f"{name}: requirements.txt says {req.specifier}, pyproject {wanted}"
        assert req.marker == source[name].marker and req.extras == source[name].extras, name


def test_the_space_and_the_app_pin_the_same_torch_and_gradio():
    listed = by_name(requirement_lines(REPO_ROOT / "requirements.txt"))
    pins = {name: pinned_version(listed[name].specifier) for name in ("torch", "torchvision", "gradio")}
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1", "gradio": "6.31.0"}
    # The Space builds with README's `sdk_version`; another Gradio than requirements.txt's would be installed twice.
    front_matter = (REPO_ROOT / "README.md").read_text().split("---")[1]
    sdk_version = re.search(r"^sdk_version:\s*\"?([^\s\"]+)", front_matter, re.M)
    assert sdk_version and sdk_version.group(1) == pins["gradio"]


def test_readme_and_ci_install_the_same_way():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip install -r requirements.txt && python app.py" in readme
    assert 'pip install -r requirements.txt -e ".[dev]" && HF_HUB_OFFLINE=1 pytest -m "not slow and not browser"' in readme
    assert 'pip install -q -r requirements.txt -e ".[dev]"' in (REPO_ROOT / ".ci" / "run").read_text()
