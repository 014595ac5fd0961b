"""Several data sources in one table: each read by its own layout, each image tagged with its source.

A source is given as `PATH[,name=NAME][,layout=LAYOUT][,split=SPLIT]` (train.py `--data A B`, `skinlesion data
describe A B`, `fit-features`, `evaluate.py`). Its name defaults to its layout (`ham10000`, `isic2017`, ...) or,
for folder layouts, to the folder's name, so ISIC 2017's train and validation folders are one source named
`isic2017` with two official splits. `split` pins every image of the source to one split; without it a source
whose ground-truth file names its official split (ISIC's `..._Training_...`, `..._Validation_...`, `..._Test_...`)
keeps that split, and any other source is split by lesion (`splits.lesion_grouped_split`).

Labels are each layout's own mapped onto HAM10000 codes, so a source with fewer classes (ISIC 2017: mel, nv, bkl)
trains the seven-class model with the others. Image ids must be unique across sources: ISIC ids are global, so
the same id in two sources is the same archive image listed twice, which would silently be trained and tested on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .layouts import ISIC_COLUMNS, find_isic_csv, load_table
from .table import DataError, LesionTable

SOURCE_SPLITS = ("train", "val", "test")
SPEC_KEYS = ("name", "layout", "split")
# Official split named in an ISIC ground-truth file name (ISIC-2017_Training_Part3_GroundTruth.csv,
# ISIC2018_Task3_Validation_GroundTruth.csv, ISIC-2017_Test_v2_Part3_GroundTruth.csv).
_OFFICIAL = (("train", re.compile(r"(?i)(^|[_\-])train")), ("val", re.compile(r"(?i)(^|[_\-])valid")),
             ("test", re.compile(r"(?i)(^|[_\-])test")))


@dataclass(frozen=True)
class SourceSpec:
    path: str
    name: str | None = None      # None = the layout's name, or the folder's for folder layouts
    layout: str | None = None    # None = auto-detect
    split: str | None = None     # None = the official split its files name, else lesion-grouped


def parse_source(text: str) -> SourceSpec:
    """`PATH[,name=NAME][,layout=LAYOUT][,split=train|val|test]` -> SourceSpec; a bad key names itself."""
    path, *options = [part.strip() for part in str(text).split(",")]
    if not path:
        raise DataError(f"data source {text!r}: empty path")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in SPEC_KEYS or not value:
            raise DataError(f"data source {text!r}: {option!r} is not one of "
                            f"{', '.join(k + '=...' for k in SPEC_KEYS)} (format PATH[,name=N][,layout=L][,split=S])")
        values[key] = value
    if values.get("split") not in (None, *SOURCE_SPLITS):
        raise DataError(f"data source {text!r}: split must be one of {list(SOURCE_SPLITS)}, got {values['split']!r}")
    return SourceSpec(path=path, **values)


def official_split(table: LesionTable) -> str | None:
    """The split an ISIC ground-truth file's name declares (Training/Validation/Test), else None."""
    if table.layout not in ISIC_COLUMNS:
        return None
    csv_path = find_isic_csv(Path(table.root), table.layout)
    name = csv_path.name if csv_path is not None else ""
    found = [split for split, pattern in _OFFICIAL if pattern.search(name)]
    return found[0] if len(found) == 1 else None


def default_name(spec: SourceSpec, layout: str) -> str:
    if spec.name:
        return spec.name
    if layout in ("imagefolder", "hf", "ph2"):
        return Path(spec.path.rstrip("/")).name.lower() or layout
    return layout


def load_sources(specs: list[SourceSpec] | list[str], *, label_map: dict[str, str] | None = None,
                 skip_bad: bool = False, layout: str | None = None) -> LesionTable:
    """Read every source into one table with `source` and `source_split` columns ('' = split by lesion).

    `layout` is the default for sources that do not name their own. The table's `sources` lists, per source
    folder: name, path as given, layout, split rule and image count per class.
    """
    specs = [parse_source(s) if isinstance(s, str) else s for s in specs]
    if not specs:
        raise DataError("no data source given")
    frames, problems, counters, infos = [], [], Counter(), []
    for spec in specs:
        table = load_table(spec.path, layout=spec.layout or layout, label_map=label_map, skip_bad=skip_bad)
        name = default_name(spec, table.layout)
        pinned = spec.split or official_split(table)
        frame = table.frame.copy()
        # Groups are per source: two sources' lesion ids mean nothing to each other.
        frame["group"] = [f"{name}:{g}" if g is not None and str(g).strip() else f"{name}:{i}"
                          for g, i in zip(frame["group"], frame["image_id"], strict=True)]
        frame["source"] = name
        frame["source_split"] = pinned or ""
        frame["source_root"] = table.root  # which folder of a source (ISIC 2017's train and val share a name)
        frames.append(frame)
        problems += table.problems
        counters.update(table.counters)
        infos.append({**asdict(spec), "name": name, "layout": table.layout, "root": table.root,
                      "split_rule": f"official ({pinned})" if pinned and not spec.split else
                                    f"given ({pinned})" if pinned else "lesion-grouped",
                      "n_images": int(len(frame)),
                      "classes": {k: int(v) for k, v in sorted(Counter(frame["label"]).items())}})
    frame = pd.concat(frames, ignore_index=True)
    dup = frame["image_id"].duplicated(keep=False)
    if dup.any():
        first = frame.loc[dup, "image_id"].iloc[0]
        where = sorted(set(frame.loc[frame["image_id"] == first, "source"]))
        raise DataError(f"image id {first!r} appears in more than one source folder ({where}); the same archive "
                        "image listed twice would be trained and tested on. Remove it from one source")
    if len(specs) == 1:
        return LesionTable(frame=frame, layout=infos[0]["layout"], root=infos[0]["root"], problems=problems,
                           counters=dict(counters), sources=infos)
    return LesionTable(frame=frame, layout="+".join(dict.fromkeys(i["layout"] for i in infos)),
                       root=";".join(i["root"] for i in infos), problems=problems, counters=dict(counters),
                       sources=infos)
