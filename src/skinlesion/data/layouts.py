"""Every dataset layout users bring, read into one table (`table.LesionTable`).

`group` is what a split must keep together (the lesion); it is filled here and merged later.
Hugging Face datasets are read by `hf.py`, imported only when that layout is asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .. import taxonomy
from ..hub import looks_like_hub_id
from ..imageio import ImageLoadError, is_image_file, load_rgb
from .metadata import read_isic2017_metadata
from .table import DataError, LesionTable, record_problem, table_from_rows

log = logging.getLogger(__name__)

LAYOUTS = ("ham10000", "isic2017", "isic2018", "isic2019", "ph2", "imagefolder", "hf")

HAM10000_CSV = "HAM10000_metadata.csv"
HAM10000_REQUIRED = ("lesion_id", "image_id", "dx")
ISIC2017_COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")
ISIC2018_COLUMNS = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2019_COLUMNS = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# ISIC 2019 onto the 7 HAM10000 classes: AK is HAM10000's akiec; SCC (invasive squamous cell
# carcinoma) joins akiec, the HAM10000 class that holds intraepithelial (in situ) SCC; UNK is dropped.
ISIC2019_TO_HAM = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl", "DF": "df",
                   "VASC": "vasc", "SCC": "akiec"}
ISIC2018_TO_HAM = {c: c.lower() for c in ISIC2018_COLUMNS[1:]}
ISIC_COLUMNS = {"isic2017": ISIC2017_COLUMNS, "isic2018": ISIC2018_COLUMNS, "isic2019": ISIC2019_COLUMNS}
# A mask or segmentation file beside an image (PH2's `_lesion`, ISIC's `_segmentation`) is not a sample.
MASK_SUFFIXES = ("_lesion", "_mask", "_segmentation", "_roi")


def is_mask(path: Path, root: Path) -> bool:
    """A segmentation mask, not a sample: its name, or a folder between `root` and it, ends in a mask suffix
    (PH2 keeps `IMD002_lesion/IMD002_lesion.bmp` and `IMD002_roi/IMD002_R1_Region.bmp` beside the image)."""
    parts = path.relative_to(root).with_suffix("").parts
    return any(part.lower().endswith(MASK_SUFFIXES) for part in parts)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def index_images(root: Path) -> dict[str, Path]:
    """Map image stem -> path for every image beneath `root` (any sub-folder, any Kaggle split)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image_file(path) and not _hidden(path, root) and not is_mask(path, root):
            found.setdefault(path.stem, path)
    return found


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_csv_header(path: Path) -> list[str]:
    """The column names of a CSV; `DataError` naming the file when it is not a readable CSV."""
    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err


def _image_id(value: str) -> str:
    """CSV ids sometimes carry the file name ('ISIC_0024306.jpg'); files are indexed by stem."""
    value = value.strip()
    return Path(value).stem if Path(value).suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"} else value


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} for a {what} CSV; found {list(frame.columns)}, "
            f"expected {list(required)}"
        )


def _attach_paths(rows: list[dict], images: dict[str, Path], problems: list[str], skip_bad: bool,
                  csv_path: Path) -> tuple[list[dict], int]:
    kept, missing = [], 0
    for row in rows:
        path = images.get(row["image_id"])
        if path is None:
            missing += 1
            record_problem(problems, f"{csv_path} row {row['_row']}: image {row['image_id']!r} not found under "
                                     f"{csv_path.parent}", skip_bad)
            continue
        row["path"] = str(path)
        kept.append(row)
    return kept, missing


def _check_label(label: str, row_desc: str, allowed: set[str] | None, problems: list[str], skip_bad: bool) -> bool:
    if allowed is not None and label not in allowed:
        record_problem(problems, f"{row_desc}: unknown label {label!r} (known: {sorted(allowed)})", skip_bad)
        return False
    return True


def find_ham_csv(folder: Path) -> Path | None:
    """`HAM10000_metadata.csv`, or else the first CSV in `folder` with the HAM10000 metadata columns."""
    if (folder / HAM10000_CSV).is_file():
        return folder / HAM10000_CSV
    for csv_path, header in _csv_headers(folder).items():
        if header is not None and set(HAM10000_REQUIRED) <= set(header):
            return csv_path
    return None


def read_ham10000(path: Path, *, skip_bad: bool = False, label_map: dict[str, str] | None = None) -> LesionTable:
    csv_path = path if path.is_file() else (find_ham_csv(path) or path / HAM10000_CSV)
    root = csv_path.parent
    if not csv_path.exists():
        raise DataError(f"{csv_path}: HAM10000 metadata CSV not found (nor any CSV with columns "
                        f"{list(HAM10000_REQUIRED)} in {root})")
    meta = _read_csv(csv_path)
    _require_columns(meta, HAM10000_REQUIRED, csv_path, "HAM10000 metadata")
    label_map = label_map or {}
    allowed = set(taxonomy.HAM10000_CODES) | set(label_map)
    problems: list[str] = []
    rows = []
    unknown = 0
    bad_rows = 0
    for i, rec in enumerate(meta.to_dict("records"), start=2):  # row 1 is the header
        where = f"{csv_path} row {i}"
        label = rec["dx"].strip()
        image_id = _image_id(rec["image_id"])
        if not image_id:
            bad_rows += 1
            record_problem(problems, f"{where}: empty image_id", skip_bad)
            continue
        if not _check_label(label, where, allowed, problems, skip_bad):
            unknown += 1
            continue
        age = (rec.get("age") or "").strip()
        try:
            age_value = float(age) if age else None
        except ValueError:
            # Age is metadata, not a label: a bad value is reported but does not cost the image.
            problems.append(f"{where}: age {age!r} is not a number; left empty")
            age_value = None
        rows.append({
            "_row": i,
            "image_id": image_id,
            "label": label,
            # A row without lesion_id is its own lesion.
            "group": rec["lesion_id"].strip() or image_id,
            "age": age_value,
            "sex": (rec.get("sex") or "").strip() or None,
            "site": (rec.get("localization") or "").strip() or None,
            # How the diagnosis was confirmed (histo, follow_up, consensus, confocal): `evaluate.py --by dx_type`.
            "dx_type": (rec.get("dx_type") or "").strip() or None,
        })
    rows, missing = _attach_paths(rows, index_images(root), problems, skip_bad, csv_path)
    counters = {"missing_images": missing, "unknown_labels": unknown, "bad_rows": bad_rows}
    return table_from_rows(rows, "ham10000", root, problems, counters, label_map)


def _isic_layout_of(columns: list[str]) -> str | None:
    cols = set(columns)
    if set(ISIC2019_COLUMNS) <= cols:
        return "isic2019"
    if set(ISIC2018_COLUMNS) <= cols:
        return "isic2018"
    if set(ISIC2017_COLUMNS) <= cols:
        return "isic2017"
    return None


def _csv_headers(path: Path) -> dict[Path, list[str] | None]:
    """Header of each CSV at `path` (a file, or the CSVs directly inside a folder); None if unreadable."""
    candidates = [path] if path.is_file() else sorted(p for p in path.glob("*.csv") if p.is_file())
    headers: dict[Path, list[str] | None] = {}
    for csv_path in candidates:
        try:
            headers[csv_path] = read_csv_header(csv_path)
        except DataError:
            headers[csv_path] = None
    return headers


def find_isic_csv(path: Path, layout: str | None = None) -> Path | None:
    """The ground-truth CSV for an ISIC folder: a CSV whose header matches `layout` (or any known format)."""
    for csv_path, header in _csv_headers(path).items():
        found = _isic_layout_of(header) if header is not None else None
        if found and (layout is None or found == layout):
            return csv_path
    return None


def _no_csv_message(path: Path, layouts: tuple[str, ...]) -> str:
    expected = "; ".join(f"{name}: {list(ISIC_COLUMNS[name])}" for name in layouts)
    headers = _csv_headers(path)
    if not headers:
        found = "no CSV file there"
    else:
        found = "; ".join(f"{p.name}: {h if h is not None else 'unreadable'}" for p, h in headers.items())
    return f"{path}: no ISIC ground-truth CSV found. Found columns - {found}. Expected columns - {expected}"


def read_isic_csv(path: Path, *, skip_bad: bool = False, label_map: dict[str, str] | None = None,
                  layout: str | None = None) -> LesionTable:
    """ISIC 2017 Part 3, 2018 Task 3 or 2019 ground truth; `layout` insists on one of them."""
    if layout is not None and layout not in ISIC_COLUMNS:
        raise DataError(f"{layout!r} is not an ISIC layout; choose one of {list(ISIC_COLUMNS)}")
    csv_path = find_isic_csv(path, layout)
    if csv_path is None:
        raise DataError(_no_csv_message(path, (layout,) if layout else tuple(ISIC_COLUMNS)))
    gt = _read_csv(csv_path)
    found_layout = _isic_layout_of(gt.columns.tolist())
    if found_layout is None:  # the header parsed with nrows=0 but not in full: treat as unreadable
        raise DataError(_no_csv_message(path, (layout,) if layout else tuple(ISIC_COLUMNS)))
    layout = found_layout
    root = csv_path.parent
    problems: list[str] = []
    rows, dropped_unk, bad_rows = [], 0, 0
    for i, rec in enumerate(gt.to_dict("records"), start=2):
        where = f"{csv_path} row {i}"
        try:
            if layout == "isic2017":
                image_id = _image_id(rec["image_id"])
                mel, sk = float(rec["melanoma"]), float(rec["seborrheic_keratosis"])
                if mel == 1 and sk == 1:
                    raise ValueError("both melanoma and seborrheic_keratosis are 1")
                label = "mel" if mel == 1 else "bkl" if sk == 1 else "nv"
            else:
                image_id = _image_id(rec["image"])
                mapping = ISIC2019_TO_HAM if layout == "isic2019" else ISIC2018_TO_HAM
                hot = [c for c in (*mapping, "UNK") if c in rec and float(rec[c] or 0) == 1]
                if len(hot) != 1:
                    raise ValueError(f"expected exactly one class column set to 1, found {hot or 'none'}")
                if hot[0] == "UNK":
                    dropped_unk += 1
                    continue
                label = mapping[hot[0]]
        except (ValueError, KeyError) as err:
            bad_rows += 1
            record_problem(problems, f"{where}: {err}", skip_bad)
            continue
        if not image_id:
            bad_rows += 1
            record_problem(problems, f"{where}: empty image id", skip_bad)
            continue
        rows.append({"_row": i, "image_id": image_id, "label": label, "group": image_id})
    if layout == "isic2017":  # age and sex, when the challenge's metadata CSV sits beside the ground truth
        metadata = read_isic2017_metadata(csv_path.parent, problems)
        for row in rows:
            row.update(metadata.get(row["image_id"], {}))
    if dropped_unk:
        problems.append(f"{csv_path}: dropped {dropped_unk} UNK rows (no HAM10000 class)")
    rows, missing = _attach_paths(rows, index_images(root), problems, skip_bad, csv_path)
    counters = {"missing_images": missing, "dropped_unk": dropped_unk, "bad_rows": bad_rows}
    return table_from_rows(rows, layout, root, problems, counters, label_map or {})


def read_imagefolder(path: Path, *, skip_bad: bool = False, label_map: dict[str, str] | None = None) -> LesionTable:
    """One sub-folder per class; images anywhere beneath it (so PH2-style case folders inside work)."""
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{path}: no class sub-folders (expected one folder per class)")
    rows, problems, ignored = [], [], 0
    for class_dir in class_dirs:
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file() or _hidden(file, path):
                continue
            if is_mask(file, class_dir):
                continue
            if not is_image_file(file):
                ignored += 1
                problems.append(f"{file}: not an image extension, ignored")
                continue
            # Ids are relative paths so two classes may both hold an 'IMD002.bmp'.
            image_id = str(file.relative_to(path).with_suffix(""))
            rows.append({"image_id": image_id, "path": str(file), "label": class_dir.name, "group": image_id})
    return table_from_rows(rows, "imagefolder", path, problems, {"ignored_files": ignored}, label_map or {})


PH2_TXT = "PH2_dataset.txt"
# PH2's "Clinical Diagnosis" codes. Labels stay PH2's own; map them with e.g.
# --label-map common_nevus=nv,atypical_nevus=nv,melanoma=mel.
PH2_DIAGNOSES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}


def read_ph2(path: Path, *, skip_bad: bool = False, label_map: dict[str, str] | None = None) -> LesionTable:
    """PH2 as distributed: `PH2_dataset.txt` ('||'-separated table) beside `PH2 Dataset images/IMDxxx/...`.

    The dermoscopic image is `IMDxxx_Dermoscopic_Image/IMDxxx.bmp`; the `_lesion` and `_roi` masks are skipped.
    """
    txt_path = path if path.is_file() else path / PH2_TXT
    if not txt_path.exists():
        raise DataError(f"{txt_path}: PH2 table not found")
    root = txt_path.parent
    try:
        lines = txt_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise DataError(f"{txt_path}: cannot read ({err})") from err
    problems: list[str] = []
    rows, bad_rows, name_col, diag_col = [], 0, None, None
    for i, line in enumerate(lines, start=1):
        if not line.lstrip().startswith("||"):
            continue  # the legend below the table
        cells = [c.strip() for c in line.split("||")]
        if name_col is None:
            if "Name" in cells and "Clinical Diagnosis" in cells:
                name_col, diag_col = cells.index("Name"), cells.index("Clinical Diagnosis")
            continue
        image_id = cells[name_col] if len(cells) > name_col else ""
        if not image_id.startswith("IMD"):
            continue
        code = cells[diag_col] if len(cells) > diag_col else ""
        if code not in PH2_DIAGNOSES:
            bad_rows += 1
            record_problem(problems, f"{txt_path} line {i}: clinical diagnosis {code!r} of {image_id} is not one of "
                                     f"{sorted(PH2_DIAGNOSES)}", skip_bad)
            continue
        rows.append({"_row": i, "image_id": image_id, "label": PH2_DIAGNOSES[code], "group": image_id})
    if name_col is None:
        raise DataError(f"{txt_path}: no header line with 'Name' and 'Clinical Diagnosis' columns")
    rows, missing = _attach_paths(rows, index_images(root), problems, skip_bad, txt_path)
    return table_from_rows(rows, "ph2", root, problems, {"missing_images": missing, "bad_rows": bad_rows},
                   label_map or {})


def detect_layout(path: str | Path) -> str:
    """Guess the layout of `path`; an explicit `layout=` argument overrides this everywhere."""
    p = Path(path)
    if not p.exists():
        if looks_like_hub_id(str(path)):
            return "hf"  # not a local path, but shaped like a Hub dataset id: owner/name
        raise DataError(f"{path}: no such file or folder")
    if p.is_file():
        if p.name == HAM10000_CSV:
            return "ham10000"
        if p.name == PH2_TXT:
            return "ph2"
        if p.suffix.lower() == ".csv":
            header = read_csv_header(p)
            if set(HAM10000_REQUIRED) <= set(header):
                return "ham10000"
            layout = _isic_layout_of(header)
            if layout:
                return layout
            raise DataError(
                f"{path}: unrecognised CSV columns {header}; expected a HAM10000 metadata CSV "
                f"{list(HAM10000_REQUIRED)} or an ISIC ground-truth CSV "
                + "; ".join(f"{name}: {list(cols)}" for name, cols in ISIC_COLUMNS.items())
            )
        raise DataError(f"{path}: a file that is neither a HAM10000 metadata CSV nor an ISIC ground-truth CSV")
    if not p.is_dir():
        raise DataError(f"{path}: neither a file nor a folder")
    if find_ham_csv(p) is not None:
        return "ham10000"
    if (p / PH2_TXT).exists():
        return "ph2"
    csv_path = find_isic_csv(p)
    if csv_path is not None:
        return _isic_layout_of(read_csv_header(csv_path)) or "isic2018"
    if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return "hf"
    sub_dirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    has_csv = any(p.glob("*.csv"))
    # A folder with a CSV we cannot read and a single `images/` folder is a CSV layout with wrong columns,
    # not a one-class image folder: say what the CSV holds instead of inventing a class called 'images'.
    if has_csv and len(sub_dirs) < 2:
        raise DataError(_no_csv_message(p, tuple(ISIC_COLUMNS)) + f"; or a HAM10000 folder with {HAM10000_CSV}")
    if sub_dirs:
        return "imagefolder"
    raise DataError(
        f"{path}: cannot tell the layout (no {HAM10000_CSV}, no {PH2_TXT}, no ISIC ground-truth CSV, no class "
        "sub-folders, no saved Hugging Face dataset); pass --layout"
    )


def load_table(path: str | Path, *, layout: str | None = None, label_map: dict[str, str] | None = None,
               skip_bad: bool = False, split: str | None = None) -> LesionTable:
    """Read any supported dataset into a `LesionTable` (layout auto-detected unless given)."""
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    layout = layout or detect_layout(path)
    if layout == "hf":
        from .hf import read_hf_dataset  # optional dependency: `datasets`

        return read_hf_dataset(str(path), split=split, skip_bad=skip_bad, label_map=label_map or {})
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file or folder")
    if layout == "ham10000":
        return read_ham10000(p, skip_bad=skip_bad, label_map=label_map)
    if layout == "ph2":
        return read_ph2(p, skip_bad=skip_bad, label_map=label_map)
    if layout == "imagefolder":
        if not p.is_dir():
            raise DataError(f"{path}: an imagefolder layout needs a folder with one sub-folder per class")
        return read_imagefolder(p, skip_bad=skip_bad, label_map=label_map)
    return read_isic_csv(p, skip_bad=skip_bad, label_map=label_map, layout=layout)


def verify_images(table: LesionTable, *, skip_bad: bool = False) -> LesionTable:
    """Decode every image once; drop (and count) or raise on the ones that cannot be read."""
    bad_rows, problems = [], list(table.problems)
    for idx, path in zip(table.frame.index, table.frame["path"], strict=True):
        try:
            load_rgb(path)
        except ImageLoadError as err:
            bad_rows.append(idx)
            record_problem(problems, str(err), skip_bad)
        except Exception as err:  # noqa: BLE001 - Pillow raises odd types on odd files; name the file
            bad_rows.append(idx)
            record_problem(problems, f"{path}: cannot decode ({type(err).__name__}: {err})", skip_bad)
    frame = table.frame.drop(index=bad_rows).reset_index(drop=True)
    counters = {**table.counters, "unreadable_images": len(bad_rows)}
    return LesionTable(frame=frame, layout=table.layout, root=table.root, problems=problems, counters=counters)


def table_to_json(table: LesionTable) -> str:
    return json.dumps(table.describe(), indent=2)
