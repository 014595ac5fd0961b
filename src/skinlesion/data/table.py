"""The one table every layout is read into, and the error a dataset that cannot be read raises.

The table (`LesionTable.frame`) has one row per image with columns
`image_id, path, label, group` and, when the source has them, `age, sex, site, dx_type` (how the
diagnosis was confirmed).
Problems (missing files, unknown labels, dropped rows) are collected in `LesionTable.problems`
when the caller asked to skip them, and raised as `DataError` naming the row otherwise.
Every reader (`layouts.py`, `hf.py`) builds its table here, so neither imports the other's module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

TABLE_COLUMNS = ["image_id", "path", "label", "group", "age", "sex", "site", "dx_type"]


class DataError(ValueError):
    """A dataset cannot be read as asked; the message names the file, row or column at fault."""


@dataclass
class LesionTable:
    frame: pd.DataFrame
    layout: str
    root: str
    problems: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    # Several sources (`sources.load_sources`): one dict per source folder (name, path, layout, split rule, counts).
    sources: list[dict] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        # Sorted before ids are assigned, so every process and every run agrees on the index of a class.
        return sorted(self.frame["label"].unique().tolist())

    def describe(self) -> dict:
        frame = self.frame
        return {
            "layout": self.layout,
            "root": self.root,
            "n_images": int(len(frame)),
            "classes": {k: int(v) for k, v in sorted(Counter(frame["label"]).items())},
            "n_groups": int(frame["group"].nunique()),
            "counters": dict(self.counters),
            "problems": list(self.problems),
            **({"sources": self.sources} if self.sources else {}),
        }


def record_problem(table_problems: list[str], message: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise DataError(message + " (pass skip_bad / --skip-bad to skip such rows and count them)")
    table_problems.append(message)


def table_from_rows(rows: list[dict], layout: str, root: Path, problems: list[str], counters: dict[str, int],
                    label_map: dict[str, str]) -> LesionTable:
    """Rows (dicts with TABLE_COLUMNS keys, others dropped) -> a checked table; empty or duplicate ids raise."""
    frame = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    frame = frame[TABLE_COLUMNS].reset_index(drop=True)
    if label_map:
        frame["label"] = frame["label"].map(lambda x: label_map.get(x, x))
    if frame.empty:
        raise DataError(f"{root}: no usable images found for layout {layout!r}")
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "image_id"].iloc[0]
        raise DataError(f"{root}: image id {dup!r} appears more than once")
    return LesionTable(frame=frame, layout=layout, root=str(root), problems=problems, counters=counters)
