"""Patient metadata a dataset ships beside its ground truth, for the table's `age` and `sex` columns.

ISIC 2017 ships `ISIC-2017_<Split>_Data_metadata.csv` (`image_id,age_approximate,sex`) beside its ground-truth
CSV; `layouts.read_isic_csv` attaches it when present (what `evaluate.py --by age/sex` groups by). Metadata is
optional: no such file gives nothing, and a bad value is noted and left empty, never fatal.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..imageio import is_image_file

ISIC2017_METADATA_COLUMNS = ("image_id", "age_approximate", "sex")
_UNKNOWN = {"", "unknown", "nan"}  # ISIC 2017 writes a missing value as the word "unknown"


def read_isic2017_metadata(folder: Path, problems: list[str]) -> dict[str, dict]:
    """image_id -> {"age", "sex"} from every CSV in `folder` with ISIC 2017's metadata columns."""
    found: dict[str, dict] = {}
    for csv_path in sorted(p for p in Path(folder).glob("*.csv") if p.is_file()):
        try:
            frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError):
            continue  # not this file: the ground-truth reader reports unreadable CSVs
        frame.columns = [str(c).strip() for c in frame.columns]
        if not set(ISIC2017_METADATA_COLUMNS) <= set(frame.columns):
            continue
        for i, rec in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
            age, sex = rec["age_approximate"].strip(), rec["sex"].strip()
            try:
                age_value = None if age.lower() in _UNKNOWN else float(age)
            except ValueError:
                problems.append(f"{csv_path} row {i}: age_approximate {age!r} is not a number; left empty")
                age_value = None
            image_id = rec["image_id"].strip()
            image_id = Path(image_id).stem if is_image_file(Path(image_id)) else image_id  # 'ISIC_1.jpg' is 'ISIC_1'
            found.setdefault(image_id, {"age": age_value, "sex": None if sex.lower() in _UNKNOWN else sex})
    return found
