"""Where the model fails, per group: metrics for each value of a metadata column (`evaluate.py --by COLUMN`).

Pure functions on the evaluated table's frame, (N,) targets and (N, K) calibrated probabilities.

Columns are the table's metadata: `sex`, `age` (binned into `AGE_BANDS`), `site` (HAM10000's `localization`,
accepted under that name too), `source` (several `--data` sources), `dx_type` (HAM10000: how the diagnosis was
confirmed). A missing or empty value is the group `unknown`.

Per group: n and the images per class; balanced accuracy (the evaluated set's prediction rule: the argmax over
the classes present in the whole set); melanoma AUC (the model's melanoma probability, melanoma against the
rest of the group); and malignant sensitivity and specificity at the app's operating point: the app answers
with the top class over all the model's classes, so an image is called malignant when that class is one (mel,
bcc, akiec). Each with a 95% percentile-bootstrap interval, resampled within each class of the group (so every
resample holds the group's classes in the same numbers and every metric stays defined).

Too small to say anything (`MIN_GROUP_IMAGES`, `MIN_CLASS_IMAGES`): a group of fewer than 30 images gets no
metrics at all, only its counts and a note. In a larger group, balanced accuracy averages the recall of the
classes with at least 5 images (the others are named in a note: one image would move its recall by 0.2 or more)
and needs two such classes; the melanoma AUC needs 5 melanomas and 5 other lesions; malignant sensitivity needs
5 malignant lesions and specificity 5 benign ones. A metric that misses its rule is None, with a note saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.table import DataError
from ..taxonomy import malignant_indices
from .metrics import rank_aucs

MIN_GROUP_IMAGES = 30   # below this, a group's metrics are omitted (a 95% interval would span most of [0, 1])
MIN_CLASS_IMAGES = 5    # images of a class a metric needs before it is computed
UNKNOWN = "unknown"
# (lower bound inclusive, upper bound exclusive, label): clinically usual bands, wide enough to fill.
AGE_BANDS = ((0.0, 30.0, "<30"), (30.0, 45.0, "30-44"), (45.0, 60.0, "45-59"), (60.0, 75.0, "60-74"),
             (75.0, math.inf, "75+"))
# Names a user may type for a table column (HAM10000 calls the body site `localization`).
COLUMN_ALIASES = {"localization": "site", "body_site": "site", "age_band": "age"}
# Table columns that are not metadata: grouping by them is meaningless.
NOT_METADATA = ("image_id", "path", "label", "group", "source_split", "source_root")
GROUP_METRICS = ("balanced_accuracy", "melanoma_auc", "malignant_sensitivity", "malignant_specificity")


class GroupColumnError(DataError):
    """`--by` names a column the evaluated data does not have (or has no values in)."""


def _is_known(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip().lower() not in ("", UNKNOWN, "nan", "none")


def available_columns(frame: pd.DataFrame) -> list[str]:
    """Metadata columns with at least one known value: what `--by` can group by."""
    return [c for c in frame.columns if c not in NOT_METADATA and any(_is_known(v) for v in frame[c])]


def resolve_column(name: str, frame: pd.DataFrame) -> str:
    """The table column `name` means (aliases applied); `GroupColumnError` naming what there is otherwise."""
    column = COLUMN_ALIASES.get(name.strip().lower(), name.strip().lower())
    if column in available_columns(frame):
        return column
    have = available_columns(frame)
    why = "has no values for it" if column in frame.columns else "has no such column"
    alias = f" ({name!r} means {column!r})" if column != name else ""
    raise GroupColumnError(
        f"--by {name}{alias}: the evaluated data {why}. Columns available to group by: "
        f"{', '.join(have) if have else 'none (this dataset ships no metadata)'}"
        + ("; site is also accepted as localization, age is binned into bands" if have else ""))


def age_band(age) -> str:
    """Years -> one of AGE_BANDS' labels, or 'unknown'."""
    if not _is_known(age):
        return UNKNOWN
    try:
        years = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    for low, high, label in AGE_BANDS:
        if low <= years < high:
            return label
    return UNKNOWN  # negative ages


def group_labels(frame: pd.DataFrame, column: str) -> list[str]:
    """One group label per row: age binned, missing values 'unknown'; `source` names its official split
    when one source name covers several folders (ISIC 2017's val and test are both `isic2017`)."""
    if column == "age":
        return [age_band(v) for v in frame["age"]]
    labels = [str(v).strip() if _is_known(v) else UNKNOWN for v in frame[column]]
    if column == "source" and {"source_split", "source_root"} <= set(frame.columns):
        folders = frame.groupby("source")["source_root"].nunique()
        return [f"{s} ({split})" if folders.get(s, 0) > 1 and split else s
                for s, split in zip(labels, frame["source_split"], strict=True)]
    return labels


def group_order(column: str, labels: Sequence[str]) -> list[str]:
    """Age bands youngest first; other groups largest first; 'unknown' last."""
    counts = pd.Series(list(labels)).value_counts()
    known = [g for g in counts.index if g != UNKNOWN]
    if column == "age":
        known = [label for _, _, label in AGE_BANDS if label in known]
    else:
        known = sorted(known, key=lambda g: (-counts[g], g))
    return known + ([UNKNOWN] if UNKNOWN in counts.index else [])


def _point_metrics(targets: np.ndarray, probs: np.ndarray, present: np.ndarray, ba_classes: np.ndarray,
                   mel: int | None, malignant: list[int], wanted: dict[str, bool]) -> dict[str, float | None]:
    """Every group metric on one (re)sample; `wanted` switches off the ones the counting rule omitted."""
    out: dict[str, float | None] = dict.fromkeys(GROUP_METRICS)
    if wanted["balanced_accuracy"]:
        preds = present[probs[:, present].argmax(axis=1)]          # the set's rule: argmax over its classes
        out["balanced_accuracy"] = float(np.mean([(preds[targets == c] == c).mean() for c in ba_classes]))
    if wanted["melanoma_auc"]:
        out["melanoma_auc"] = float(rank_aucs((targets == mel)[:, None], probs[:, [mel]])[0])
    called = np.isin(probs.argmax(axis=1), malignant)               # the app's rule: argmax over all classes
    is_malignant = np.isin(targets, malignant)
    if wanted["malignant_sensitivity"]:
        out["malignant_sensitivity"] = float(called[is_malignant].mean())
    if wanted["malignant_specificity"]:
        out["malignant_specificity"] = float((~called[~is_malignant]).mean())
    return out


def group_metrics(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str], present: np.ndarray, *,
                  bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """One group's counts, metrics, 95% intervals and notes (see the module docstring for the rules).

    `targets` index `label_names`; `probs` are the model's (N, K) calibrated probabilities; `present` are the
    model class indices present in the whole evaluated set (its prediction rule).
    """
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    label_names = list(label_names)
    n = int(targets.size)
    counts = np.bincount(targets, minlength=len(label_names))
    result: dict = {"n": n, "n_per_class": {label_names[c]: int(counts[c]) for c in np.flatnonzero(counts)},
                    **dict.fromkeys(GROUP_METRICS), "ci95": {}, "notes": []}
    notes = result["notes"]
    malignant = malignant_indices(label_names)
    mel = label_names.index("mel") if "mel" in label_names else None
    n_malignant = int(np.isin(targets, malignant).sum())
    result["n_malignant"] = n_malignant
    if n < MIN_GROUP_IMAGES:
        notes.append(f"too small to say anything: {n} images (< {MIN_GROUP_IMAGES}); metrics omitted")
        return result

    ba_classes = np.array([c for c in np.asarray(present) if counts[c] >= MIN_CLASS_IMAGES], dtype=np.int64)
    few = [f"{label_names[c]} ({counts[c]})" for c in np.asarray(present) if 0 < counts[c] < MIN_CLASS_IMAGES]
    wanted = {
        "balanced_accuracy": ba_classes.size >= 2,
        "melanoma_auc": mel is not None and counts[mel] >= MIN_CLASS_IMAGES and n - counts[mel] >= MIN_CLASS_IMAGES,
        "malignant_sensitivity": bool(malignant) and n_malignant >= MIN_CLASS_IMAGES,
        "malignant_specificity": bool(malignant) and n - n_malignant >= MIN_CLASS_IMAGES,
    }
    result["balanced_accuracy_classes"] = [label_names[c] for c in ba_classes]
    if not wanted["balanced_accuracy"]:
        notes.append(f"balanced accuracy omitted: fewer than 2 classes with >= {MIN_CLASS_IMAGES} images")
    elif few:
        notes.append(f"balanced accuracy over {', '.join(result['balanced_accuracy_classes'])}; "
                     f"left out with < {MIN_CLASS_IMAGES} images: {', '.join(few)}")
    if mel is not None and not wanted["melanoma_auc"]:
        notes.append(f"melanoma AUC omitted: {int(counts[mel])} melanomas and {n - int(counts[mel])} other lesions "
                     f"(needs >= {MIN_CLASS_IMAGES} of each)")
    if malignant and not wanted["malignant_sensitivity"]:
        notes.append(f"malignant sensitivity omitted: {n_malignant} malignant lesions (< {MIN_CLASS_IMAGES})")
    if malignant and not wanted["malignant_specificity"]:
        notes.append(f"malignant specificity omitted: {n - n_malignant} benign lesions (< {MIN_CLASS_IMAGES})")
    present = np.asarray(present, dtype=np.int64)
    result.update(_point_metrics(targets, probs, present, ba_classes, mel, malignant, wanted))

    if bootstrap > 0 and any(wanted.values()):
        # Resampled within each class: the group's class counts stay fixed, so no resample loses a class.
        rng = np.random.default_rng(seed)
        members = [np.flatnonzero(targets == c) for c in np.flatnonzero(counts)]
        samples: dict[str, list[float]] = {m: [] for m in GROUP_METRICS}
        for _ in range(bootstrap):
            idx = np.concatenate([rng.choice(m, size=m.size, replace=True) for m in members])
            for name, value in _point_metrics(targets[idx], probs[idx], present, ba_classes, mel, malignant,
                                              wanted).items():
                if value is not None and not math.isnan(value):
                    samples[name].append(value)
        tail = (1.0 - level) / 2.0
        result["ci95"] = {name: [float(np.quantile(v, tail)), float(np.quantile(v, 1.0 - tail))]
                          for name, v in samples.items() if v}
    return result


def by_groups(frame: pd.DataFrame, targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str],
              columns: Sequence[str], *, bootstrap: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{column: {"asked_as", "groups": [{"group", "n", metrics..., "ci95", "notes"}, ...]}} for each `--by`
    column; rows of `frame` align with `targets` and `probs`."""
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(frame) != targets.size:
        raise ValueError(f"the table has {len(frame)} rows but there are {targets.size} targets")
    present = np.unique(targets)
    out: dict[str, dict] = {}
    for name in columns:
        column = resolve_column(name, frame)
        labels = np.array(group_labels(frame, column), dtype=object)
        groups = []
        for label in group_order(column, labels):
            rows = np.flatnonzero(labels == label)
            groups.append({"group": label, **group_metrics(targets[rows], probs[rows], label_names, present,
                                                           bootstrap=bootstrap, seed=seed)})
        out[column] = {"asked_as": name, "groups": groups}
    return out


def rule_text() -> str:
    return (f"Groups of fewer than {MIN_GROUP_IMAGES} images get no metrics. Balanced accuracy averages the recall "
            f"of the group's classes with at least {MIN_CLASS_IMAGES} images; melanoma AUC needs "
            f"{MIN_CLASS_IMAGES} melanomas and {MIN_CLASS_IMAGES} other lesions; malignant sensitivity (the app's "
            "answer: its top class over all the model's classes is mel, bcc or akiec) needs "
            f"{MIN_CLASS_IMAGES} malignant lesions, specificity {MIN_CLASS_IMAGES} benign ones. 95% intervals: "
            "percentile bootstrap resampled within each class of the group.")


def _cell(group: dict, name: str) -> str:
    value = group.get(name)
    if value is None:
        return "—"
    ci = group.get("ci95", {}).get(name)
    return f"{value:.3f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else f"{value:.3f}"


def groups_markdown(by: dict[str, dict], *, heading: str = "##", title: str = "By", rule: bool = True) -> list[str]:
    """Markdown lines: one table per column (n, classes, the metrics with intervals, notes) under
    `{heading} {title} {column}`."""
    lines: list[str] = []
    for column, entry in by.items():
        asked = entry.get("asked_as", column)
        lines += [f"{heading} {title} {column}" + (f" (`--by {asked}`)" if asked != column else ""), "",
                  "| group | n | mel / malignant | balanced accuracy | melanoma AUC | malignant sensitivity | "
                  "malignant specificity | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in entry["groups"]:
            lines.append(f"| {g['group']} | {g['n']} | {g.get('n_per_class', {}).get('mel', 0)} / {g.get('n_malignant')} | "
                         f"{_cell(g, 'balanced_accuracy')} | {_cell(g, 'melanoma_auc')} | "
                         f"{_cell(g, 'malignant_sensitivity')} | {_cell(g, 'malignant_specificity')} | "
                         f"{'; '.join(g.get('notes', []))} |")
        lines.append("")
    if rule and by:
        lines += [rule_text(), ""]
    return lines
