"""Which images an evaluation scores, when `--data` names one source or several.

One source folder: exactly `view_logits.resolve_split` (a manifest-split set gives its test split by default,
any other set is scored whole, HAM10000 without a manifest is refused).

Several source folders (`sources.load_sources`), per folder:
- listed in the split manifest: the asked split (default test) of its listed images; a folder the manifest lists
  only in part is refused as a stale manifest, and a folder with no image in the asked split adds none;
- not listed at all: the model never trained, tuned or chose on it, so it is held out and scored whole under
  `--split test` (the default) and `--split all`; `--split val` refuses it (it has no validation split);
- no manifest at all: each folder as a single one would be (so HAM10000 needs `--manifest` or `--split all`).
`--split all` scores every image of every folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import MANIFEST_FILE
from ..data import LesionTable, read_manifest
from ..data.table import DataError
from .view_logits import resolve_split


def source_folders(table: LesionTable) -> list[tuple[dict, np.ndarray]]:
    """(source info, row indices) per source folder (`load_sources` tags each row with its `source_root`);
    a table without that record is one folder."""
    frame = table.frame
    if len(table.sources) < 2 or "source_root" not in frame.columns:
        info = table.sources[0] if len(table.sources) == 1 else {"name": table.layout, "root": table.root,
                                                                  "layout": table.layout}
        return [(info, np.arange(len(frame)))]
    return [(info, np.flatnonzero(((frame["source_root"] == info["root"]) & (frame["source"] == info["name"])).to_numpy()))
            for info in table.sources]


def folder_layouts(table: LesionTable) -> set[str]:
    return {info.get("layout", table.layout) for info, _ in source_folders(table)}


def manifest_for(manifest: str | None, folder: Path | None, table: LesionTable) -> Path | None:
    """`--manifest` if given; else the model folder's split manifest when the data is HAM10000 (whose images a
    model trained on it has seen) or when the manifest lists any of the data's images."""
    if manifest:
        return Path(manifest)
    if folder is None or not (folder / MANIFEST_FILE).is_file():
        return None
    own = folder / MANIFEST_FILE
    if "ham10000" in folder_layouts(table):
        return own
    listed = set(read_manifest(own)["image_id"])
    return own if any(i in listed for i in table.frame["image_id"]) else None


def _sub_table(table: LesionTable, rows: np.ndarray, info: dict) -> LesionTable:
    return LesionTable(frame=table.frame.iloc[rows].reset_index(drop=True), layout=info.get("layout", table.layout),
                       root=info.get("root", table.root), problems=list(table.problems),
                       counters=dict(table.counters), sources=[info])


def select_images(table: LesionTable, split: str | None,
                  manifest_path: Path | None) -> tuple[LesionTable, str, list[dict]]:
    """(rows to score, split name, per-folder record of what was taken and why); see the module docstring."""
    folders = source_folders(table)
    if len(folders) == 1:
        selected, name = resolve_split(table, split, manifest_path)
        return selected, name, []
    chosen = split or ("test" if manifest_path is not None else "all")  # as one folder: test with a manifest
    split_of = None
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        split_of = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    frames, record = [], []
    for info, rows in folders:
        sub = _sub_table(table, rows, info)
        where = f"source {info.get('name')!r} ({info.get('root')})"
        if split_of is None:
            taken, _ = resolve_split(sub, split, None)
            rule = "whole (no split manifest)"
        elif chosen == "all":
            taken, rule = sub, "whole (--split all)"
        else:
            listed = sub.frame["image_id"].map(split_of)
            if listed.isna().all():
                if chosen == "val":
                    raise DataError(f"{where} is not in the split manifest {manifest_path}, so it has no validation "
                                    "split; leave it out of --data, or use --split test / all")
                taken, rule = sub, "whole: held out (not in the split manifest)"
            elif listed.isna().any():
                first = sub.frame["image_id"][listed.isna()].iloc[0]
                raise DataError(f"the split manifest {manifest_path} lists only part of {where} ({int(listed.isna().sum())} "
                                f"image(s) missing, first {first!r}); was it made for other data?")
            else:
                taken = _sub_table(table, rows[(listed == chosen).to_numpy()], info)
                rule = f"manifest split {chosen}"
        frames.append(taken.frame)
        record.append({"name": info.get("name"), "path": info.get("path", info.get("root")),
                       "layout": info.get("layout"), "rule": rule, "n_images": int(len(taken.frame))})
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise DataError(f"no image of {table.root} is in split {chosen!r}")
    return (LesionTable(frame=frame, layout=table.layout, root=table.root, problems=list(table.problems),
                        counters=dict(table.counters), sources=list(table.sources)), chosen, record)
