"""Which trained folders to combine with `skinlesion ensemble`, chosen on the VALIDATION split only.

    python scripts/compare_ensembles.py --data ../shared/data/HAM10000 --out runs/compare_ensembles \
        runs/ship2fov runs/ship4 runs/mnv2_192_ap_run6 runs/lite2_192_la_run7
    python scripts/compare_ensembles.py --data ../shared/data/HAM10000 ../shared/data/ISIC2017_train \
        ../shared/data/ISIC2017_val --out runs/compare_multi runs/run11 runs/run10   # several sources

Every folder is served as the ensemble would serve it: with the FIRST folder's geometry (input size, crop,
interpolation, field-of-view crop) and its own mean/std, with flip TTA, and its logits divided by its own
temperature. Each subset's equal-weight mean of those logits is exactly what `skinlesion ensemble` would
build (before the ensemble's own temperature, which does not change the argmax of one view and barely that of
the TTA average). Prints validation balanced accuracy and melanoma AUC per subset, and with several
sources the same per source and the worst source's balanced accuracy (the rule that chooses: docs/training.md,
"Choosing across sources"); the per-folder logits are cached in --out (keyed by the weights' sha256 and the
validation images), never pixels. Folders must share the split manifest (`skinlesion ensemble`'s rule).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from skinlesion.constants import MANIFEST_FILE, MODEL_WEIGHTS_FILE
from skinlesion.data import read_manifest, select_split
from skinlesion.data.sources import load_sources
from skinlesion.data.transforms import Preprocessing
from skinlesion.evaluation.metrics import binary_auc
from skinlesion.evaluation.view_logits import collect_view_logits
from skinlesion.inference.predictor import Predictor
from skinlesion.models.ensemble import Member, check_members, load_members
from skinlesion.models.folder import file_sha256


def member_logits(member: Member, geometry: Preprocessing, table, out: Path, workers: int) -> np.ndarray:
    """(V, N, K) validation logits / temperature of one folder served with `geometry`; cached."""
    loaded, folder = member.loaded, member.folder
    pre = dataclasses.replace(geometry, mean=loaded.preprocessing.mean, std=loaded.preprocessing.std,
                              color_constancy=loaded.preprocessing.color_constancy)
    images = hashlib.sha256("\n".join(table.frame["image_id"]).encode()).hexdigest()[:8]
    key = f"{file_sha256(folder / MODEL_WEIGHTS_FILE)[:12]}_{pre.input_size}_{int(pre.fov_crop)}_{images}"
    path = out / f"val_logits_{key}.npy"
    if not path.is_file():
        views = collect_view_logits(Predictor(dataclasses.replace(loaded, preprocessing=pre)), table, "flips",
                                    batch_size=32, workers=workers, progress=False)
        np.save(path, (views.logits / loaded.temperature).numpy())
    return np.load(path)


def combined_probs(member_logits: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """(N, K) probabilities of the ensemble `skinlesion ensemble --weight` builds: the weighted mean of the members'
    calibrated (V, N, K) logits, softmax per view, then the mean over the TTA views."""
    combined = sum(w * z for w, z in zip(weights, member_logits, strict=True)) / sum(weights)
    return torch.softmax(torch.from_numpy(combined), dim=-1).mean(dim=0).numpy()


def subset_scores(probs: np.ndarray, y: np.ndarray, sources: np.ndarray, mel: int | None) -> dict:
    """Pooled balanced accuracy and melanoma AUC; with several sources, the same per source and the worst one."""
    def scores(mask: np.ndarray) -> tuple[float, float | None]:
        auc = None if mel is None else binary_auc(y[mask] == mel, probs[mask, mel])
        return float(balanced_accuracy_score(y[mask], probs[mask].argmax(1))), auc

    row = dict(zip(("val_balanced_accuracy", "val_melanoma_auc"), scores(np.ones(len(y), bool)), strict=True))
    names = sorted(set(sources.tolist()))
    if len(names) > 1:
        row["per_source"] = {n: dict(zip(("balanced_accuracy", "melanoma_auc"), scores(sources == n), strict=True))
                             for n in names}
        row["worst_source_balanced_accuracy"] = min(v["balanced_accuracy"] for v in row["per_source"].values())
    return row


def describe(row: dict) -> str:
    def fmt(ba: float, auc: float | None) -> str:
        return f"{ba:.4f}" + ("" if auc is None else f" / {auc:.4f}")

    text = f"pooled {fmt(row['val_balanced_accuracy'], row['val_melanoma_auc'])}"
    for name, v in row.get("per_source", {}).items():
        text += f"  {name} {fmt(v['balanced_accuracy'], v['melanoma_auc'])}"
    if "worst_source_balanced_accuracy" in row:
        text += f"  worst {row['worst_source_balanced_accuracy']:.4f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="trained model folders; the first one's geometry is used")
    parser.add_argument("--data", required=True, nargs="+",
                        help="the training sources (split by the folders' shared manifest), e.g. HAM10000 and "
                             "ISIC 2017 train and val")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--weights", nargs="+", type=float, action="append", default=[], metavar="W",
                        help="also score all folders with these weights (one per folder, as `skinlesion ensemble "
                             "--weight`); repeatable")
    args = parser.parse_args()
    bad = [w for w in args.weights if len(w) != len(args.folders) or min(w) <= 0]
    if bad:
        parser.error(f"--weights {bad[0]}: give one positive weight per folder ({len(args.folders)})")
    members = load_members(args.folders)
    _, manifest, _ = check_members(members)  # same labels and split, or a clear error
    args.out.mkdir(parents=True, exist_ok=True)
    labels = members[0].loaded.label_names
    table = select_split(load_sources(args.data), read_manifest(manifest or args.folders[0] / MANIFEST_FILE), "val")
    logits = {m.folder.name: member_logits(m, members[0].loaded.preprocessing, table, args.out, args.workers)
              for m in members}
    y = np.array([labels.index(label) for label in table.frame["label"]])
    sources = table.frame["source"].to_numpy()
    mel = labels.index("mel") if "mel" in labels else None
    print("balanced accuracy / melanoma AUC on validation (flip TTA)", flush=True)
    rows = []
    for r in range(1, len(members) + 1):
        for subset in itertools.combinations(logits, r):
            probs = combined_probs([logits[name] for name in subset], [1.0] * len(subset))
            rows.append({"members": list(subset), **subset_scores(probs, y, sources, mel)})
            print(f"{' + '.join(subset):40s} {describe(rows[-1])}", flush=True)
    for weights in args.weights:
        probs = combined_probs(list(logits.values()), weights)
        rows.append({"members": list(logits), "weights": [w / sum(weights) for w in weights],
                     **subset_scores(probs, y, sources, mel)})
        print(f"{'weights ' + ' '.join(f'{w:g}' for w in weights):40s} {describe(rows[-1])}", flush=True)
    (args.out / "compare_ensembles.json").write_text(json.dumps(
        {"folders": [str(f) for f in args.folders], "data": args.data, "n_val": int(len(y)),
         "n_val_per_source": {n: int((sources == n).sum()) for n in sorted(set(sources.tolist()))},
         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
