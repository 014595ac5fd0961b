"""The clickable examples (a folder, or a Hub dataset's images) and their captions; Hub image datasets."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..hub import HubUnavailableError, hub_offline_mode, require_hub
from ..imageio import find_images
from .registry import parse_model_spec

MAX_EXAMPLES = 24
EXAMPLES_DATASET_ENV = "EXAMPLES_DATASET"  # Hub dataset id[@rev] whose images become the examples
EXAMPLES_CSV = "examples.csv"  # beside the images: file,true_diagnosis,... (scripts/make_examples.py writes it)


def example_images(folder: str | Path | None, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Image files directly or recursively under `folder`, sorted, at most `limit`; [] without a folder."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"examples folder {folder} does not exist")
    return find_images(folder)[:limit]


def example_labels(paths: Sequence[Path]) -> list[str]:
    """What each example's caption says: its true diagnosis from examples.csv, else the file name."""
    truths: dict[Path, str] = {}
    for folder in {p.parent for p in paths}:
        listing = folder / EXAMPLES_CSV
        if listing.is_file():
            with listing.open(newline="") as f:
                truths.update({folder / r["file"]: r.get("true_diagnosis", "") for r in csv.DictReader(f)
                               if r.get("file")})
    return [f"True: {truths[p]}" if truths.get(p) else p.stem for p in paths]


def examples_from_hub(dataset: str) -> Path:
    """Download (or take from cache) a Hub dataset's images; `owner/name@rev` pins a revision."""
    return hub_dataset_images(dataset, what="examples dataset")


def hub_dataset_images(dataset: str, *, what: str = "dataset") -> Path:
    """The local folder of a Hub dataset's images (`owner/name@rev` pins a revision): the cache first, so a
    Space restarts offline; not cached and offline or unreachable: HubUnavailableError naming `what`."""
    from huggingface_hub import snapshot_download

    spec = parse_model_spec(dataset)
    patterns = ["*.jpg", "*.jpeg", "*.png", "**/*.jpg", "**/*.jpeg", "**/*.png"]
    try:
        return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision,
                                      allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - a cache miss: go online below
        pass
    if hub_offline_mode():
        raise HubUnavailableError(f"{what} {spec.source!r} is not cached and HF_HUB_OFFLINE=1 is set")
    require_hub(f"{what} {spec.source!r}")
    return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision, allow_patterns=patterns))
