"""Which trained folders to combine with `skinlesion ensemble`, chosen on the VALIDATION split only.

    python scripts/compare_ensembles.py --data ../shared/data/HAM10000 --out runs/compare_ensembles \
        runs/ship2fov runs/ship4 runs/mnv2_192_ap_run6 runs/lite2_192_la_run7

Every folder is served as the ensemble would serve it: with the FIRST folder's geometry (input size, crop,
interpolation, field-of-view crop) and its own mean/std, with flip TTA, and its logits divided by its own
temperature. Each subset's equal-weight mean of those logits is exactly what `skinlesion ensemble` would
build (before the ensemble's own temperature, which does not change the argmax of one view and barely that of
the TTA average). Prints validation balanced accuracy and melanoma AUC per subset; the per-folder logits are
cached in --out (keyed by the weights' sha256), never pixels. Folders must share the split manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from skinlesion.constants import MANIFEST_FILE, MODEL_WEIGHTS_FILE
from skinlesion.data import load_table, read_manifest, select_split
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
    key = f"{file_sha256(folder / MODEL_WEIGHTS_FILE)[:12]}_{pre.input_size}_{int(pre.fov_crop)}"
    path = out / f"val_logits_{key}.npy"
    if not path.is_file():
        views = collect_view_logits(Predictor(dataclasses.replace(loaded, preprocessing=pre)), table, "flips",
                                    batch_size=32, workers=workers, progress=False)
        np.save(path, (views.logits / loaded.temperature).numpy())
    return np.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="trained model folders; the first one's geometry is used")
    parser.add_argument("--data", required=True, help="HAM10000 (split by the folders' shared manifest)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    members = load_members(args.folders)
    check_members(members)  # same labels and split manifest, or a clear error
    args.out.mkdir(parents=True, exist_ok=True)
    labels = members[0].loaded.label_names
    table = select_split(load_table(args.data), read_manifest(args.folders[0] / MANIFEST_FILE), "val")
    logits = {m.folder.name: member_logits(m, members[0].loaded.preprocessing, table, args.out, args.workers)
              for m in members}
    y = np.array([labels.index(label) for label in table.frame["label"]])
    mel = labels.index("mel") if "mel" in labels else None
    rows = []
    for r in range(1, len(members) + 1):
        for subset in itertools.combinations(logits, r):
            combined = torch.from_numpy(sum(logits[name] for name in subset) / len(subset))
            probs = torch.softmax(combined, dim=-1).mean(dim=0).numpy()  # TTA: mean of the views' probabilities
            rows.append({"members": list(subset), "val_balanced_accuracy": float(balanced_accuracy_score(y, probs.argmax(1))),
                         "val_melanoma_auc": None if mel is None else binary_auc(y == mel, probs[:, mel])})
            print(f"{' + '.join(subset):60s} balanced accuracy {rows[-1]['val_balanced_accuracy']:.4f}"
                  + ("" if mel is None else f"  melanoma AUC {rows[-1]['val_melanoma_auc']:.4f}"), flush=True)
    (args.out / "compare_ensembles.json").write_text(json.dumps(
        {"folders": [str(f) for f in args.folders], "n_val": int(len(y)), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
