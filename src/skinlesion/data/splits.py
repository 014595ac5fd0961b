"""Leakage-free splits: every image of a lesion (and of lesions known to be the same) in one split.

The split is stratified by class and grouped by lesion. scikit-learn's StratifiedGroupKFold only
gives 1/k fractions, so the assignment here is a small greedy over groups with exact target
fractions: groups are visited in a seeded random order and each goes to the split furthest below its
target image count for that group's class (the least-squares choice). The order is random rather
than largest-first on purpose: largest-first fills train with every multi-image lesion and leaves
val/test almost only single-image lesions, a different population from the one trained on.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .table import DataError, LesionTable

SPLITS = ("train", "val", "test")
# A training image that duplicates a validation or test image (near_duplicates.py) is kept in the manifest,
# under this name, so the record says what was left out and why; no split selects it.
EXCLUDED = "excluded"


def read_duplicate_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Pairs of image ids known to show one lesion (`similarity,from_img,to_img`, file names allowed)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable duplicate-pairs CSV ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if not {"from_img", "to_img"} <= set(frame.columns):
        raise DataError(f"{path}: a duplicate-pairs CSV needs columns from_img,to_img; found {list(frame.columns)}")
    pairs = []
    for i, (a, b) in enumerate(zip(frame["from_img"], frame["to_img"], strict=True), start=2):
        a, b = a.strip(), b.strip()
        if not a or not b:
            raise DataError(f"{path} row {i}: empty image name in a duplicate pair")
        pairs.append((Path(a).stem, Path(b).stem))
    return pairs


def group_ids(frame: pd.DataFrame) -> pd.Series:
    """The group of each row; a row without one (None, NaN or blank) is its own group, named by its image id."""
    out = []
    for group, image_id in zip(frame["group"], frame["image_id"], strict=True):
        text = "" if group is None or (isinstance(group, float) and np.isnan(group)) else str(group).strip()
        out.append(text or str(image_id))
    return pd.Series(out, index=frame.index, dtype=object)


def merge_groups(frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.Series:
    """Union the groups of each pair of images (union-find on group ids); unknown ids are ignored."""
    groups = group_ids(frame)
    group_of_image = dict(zip(frame["image_id"], groups, strict=True))
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        parent.setdefault(g, g)
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for a, b in pairs:
        if a in group_of_image and b in group_of_image:
            ra, rb = find(group_of_image[a]), find(group_of_image[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return groups.map(find)


def lesion_grouped_split(table: LesionTable, *, val: float = 0.1, test: float = 0.1, seed: int = 0,
                         duplicate_pairs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Return `image_id, split` for every row (in table order); no group appears in two splits."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val ({val}) and test ({test}) must be fractions in [0, 1) that sum below 1")
    frame = table.frame
    groups = merge_groups(frame, duplicate_pairs) if duplicate_pairs else group_ids(frame)
    fractions = np.array([1.0 - val - test, val, test])
    classes = sorted(frame["label"].unique().tolist())

    # Per group: image count per class. A group's class is its most common label (a lesion has one
    # diagnosis; merged duplicate pairs may not), but every image is counted under its own label.
    per_group = pd.crosstab(groups.to_numpy(), frame["label"].to_numpy()).reindex(columns=classes, fill_value=0)
    group_names = per_group.index.to_numpy()
    group_counts = per_group.to_numpy()                       # (n_groups, n_classes)
    group_class = group_counts.argmax(axis=1)                  # ties -> first class in sorted order
    targets = fractions[None, :] * group_counts.sum(axis=0)[:, None]  # (n_classes, 3)

    rng = np.random.default_rng(seed)
    counts = np.zeros((len(classes), 3))
    assignment: dict[str, int] = {}
    for g in rng.permutation(len(group_names)):
        c = group_class[g]
        deficit = targets[c] - counts[c]
        deficit[fractions == 0] = -np.inf  # never put anything in a split whose fraction is zero
        choice = int(np.argmax(deficit))
        assignment[group_names[g]] = choice
        counts[:, choice] += group_counts[g]
    split = groups.map(assignment).map(lambda i: SPLITS[i])
    return pd.DataFrame({"image_id": frame["image_id"].to_numpy(), "split": split.to_numpy()})


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # `source` (several sources) follows the two columns every reader needs.
    columns = ["image_id", "split", *(["source"] if "source" in manifest.columns else [])]
    manifest[columns].to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable split manifest ({err})") from err
    if list(frame.columns[:2]) != ["image_id", "split"]:
        raise DataError(f"{path}: a split manifest has columns image_id,split; found {list(frame.columns)}")
    bad = sorted(set(frame["split"]) - {*SPLITS, EXCLUDED})
    if bad:
        raise DataError(f"{path}: unknown split name(s) {bad}; expected {list(SPLITS)}")
    dup = frame["image_id"][frame["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: image id {dup.iloc[0]!r} is listed more than once")
    return frame


def manifest_hash(path: str | Path) -> str:
    """sha256 of the manifest file, stored in the model folder to tie a model to its split."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_changes(shipped: pd.DataFrame, candidate: pd.DataFrame) -> list[str]:
    """What `candidate` changes about the images `shipped` lists: [] when every one keeps its split.

    A model trained on more sources has a larger manifest than the one it replaces; what must not move is the
    split of every image already listed (else the old test images may be in the new training set, and the
    reports compare different test sets). A training image may become `excluded` (the near-duplicate screen
    left it out of training): that only removes training data.
    """
    new = dict(zip(candidate["image_id"], candidate["split"], strict=True))
    changes = []
    for image_id, split in zip(shipped["image_id"], shipped["split"], strict=True):
        now = new.get(image_id)
        if now is None:
            changes.append(f"{image_id}: {split} -> not listed")
        elif now != split and not (split == "train" and now == EXCLUDED):
            changes.append(f"{image_id}: {split} -> {now}")
    return changes


def select_split(table: LesionTable, manifest: pd.DataFrame, split: str) -> LesionTable:
    """Rows of `table` in `split`; images the manifest does not know are an error (a stale manifest)."""
    if split == "all":
        return table
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")
    known = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    unknown = [i for i in table.frame["image_id"] if i not in known]
    if unknown:
        raise DataError(
            f"the split manifest does not list {len(unknown)} image(s) of {table.root} (first: {unknown[0]!r}); "
            "was it made for another dataset?"
        )
    frame = table.frame[table.frame["image_id"].map(known) == split].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"split {split!r} of {table.root} is empty")
    return LesionTable(frame=frame, layout=table.layout, root=table.root, problems=list(table.problems),
                       counters=dict(table.counters), sources=list(table.sources))
