"""Hugging Face `datasets` as a source: a dataset saved with `save_to_disk`, or a Hub id.

Images live inside Arrow files, not on disk, so they are written out once as PNG files under a
cache folder keyed by the dataset's fingerprint; after that the rows are ordinary file rows and
every other part of the package (cache, transforms, evaluation) needs no special case.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..hub import HubUnavailableError, looks_like_hub_id, require_hub
from ..imageio import ImageLoadError, load_rgb
from .table import DataError, LesionTable, record_problem, table_from_rows

IMAGE_COLUMNS = ("image", "img", "images")
LABEL_COLUMNS = ("label", "dx", "labels", "diagnosis", "class")
GROUP_COLUMNS = ("lesion_id", "group", "patient_id")
ID_COLUMNS = ("image_id", "isic_id", "id")


def _cache_root() -> Path:
    return Path(os.environ.get("SKINLESION_CACHE", Path.home() / ".cache" / "skinlesion")) / "hf"


def _load(source: str, split: str | None):
    local = Path(source)
    if not local.exists():
        if not looks_like_hub_id(source):
            raise DataError(f"{source}: neither a saved dataset folder nor a Hub dataset id (owner/name)")
        # Before importing `datasets` (seconds) and before any request: offline must fail at once.
        try:
            require_hub(f"dataset {source!r}")
        except HubUnavailableError as err:
            raise DataError(f"{source}: no such local folder, and as a Hub dataset id: {err}") from err
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataError("reading a Hugging Face dataset needs `pip install datasets`") from err
    if local.exists():
        try:
            ds = datasets.load_from_disk(str(local))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise DataError(f"{source}: not a dataset saved with `save_to_disk` ({err})") from err
    else:
        ds = datasets.load_dataset(source.removeprefix("hf-hub:"))
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise DataError(f"{source}: no split {name!r}; it has {list(ds)}")
        ds = ds[name]
    elif split is not None:
        raise DataError(f"{source}: split {split!r} asked for, but this is a single dataset without splits")
    return ds


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def read_hf_dataset(source: str, *, split: str | None = None, skip_bad: bool = False,
                    label_map: dict[str, str]) -> LesionTable:
    ds = _load(source, split)
    import datasets

    columns = list(ds.column_names)
    image_col, label_col = _pick(columns, IMAGE_COLUMNS), _pick(columns, LABEL_COLUMNS)
    if image_col is None or label_col is None:
        raise DataError(
            f"{source}: needs an image column (one of {list(IMAGE_COLUMNS)}) and a label column "
            f"(one of {list(LABEL_COLUMNS)}); found {columns}"
        )
    group_col, id_col = _pick(columns, GROUP_COLUMNS), _pick(columns, ID_COLUMNS)
    feature = ds.features[label_col]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    # The fingerprint names this exact dataset content; take it before the cast below changes it.
    out_dir = _cache_root() / ds._fingerprint
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(ds.features[image_col], datasets.Image):
        # Raw bytes: decoded by `load_rgb` (one decoder, its bomb and truncation checks) and only on a cache miss.
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    problems: list[str] = []
    rows, bad = [], 0
    for i, rec in enumerate(ds):
        image_id = str(rec[id_col]).strip() if id_col and rec[id_col] not in (None, "") else f"{i:07d}"
        where = f"{source} row {i} ({image_id})"
        raw_label = rec[label_col]
        if raw_label is None or (names is not None and not 0 <= int(raw_label) < len(names)):
            # ClassLabel stores a missing label as -1, which would otherwise index the last class.
            bad += 1
            record_problem(problems, f"{where}: no valid label ({raw_label!r})", skip_bad)
            continue
        label = names[int(raw_label)] if names is not None else str(raw_label).strip()
        path = out_dir / f"{i:07d}.png"
        if not path.exists():
            try:
                img = _decode(rec[image_col], where)
            except ImageLoadError as err:
                bad += 1
                record_problem(problems, str(err), skip_bad)
                continue
            tmp = out_dir / f"{i:07d}.{os.getpid()}.tmp"
            img.save(tmp, format="PNG")
            tmp.replace(path)  # atomic: a crash never leaves a half-written PNG behind
        group = str(rec[group_col]).strip() if group_col and rec[group_col] not in (None, "") else image_id
        rows.append({"image_id": image_id, "path": str(path), "label": label, "group": group})
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(ds)} in the dataset; problems: {problems[:3]})")
    return table_from_rows(rows, "hf", Path(source), problems, {"exported_images": len(rows), "bad_rows": bad}, label_map)


def _decode(value, where: str):
    """An Image column cell (bytes/path dict when not decoded, a PIL image otherwise) -> RGB PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ImageLoadError(f"{where}: no image in this row")
    try:
        return load_rgb(value)
    except ImageLoadError as err:
        raise ImageLoadError(f"{where}: {err}") from err
