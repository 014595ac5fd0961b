"""How a model folder holds up when the validation lesions are photographed differently (validation split only).

    python scripts/shift_robustness.py --model weights --data ../shared/data/HAM10000 --out runs/shift_weights.json

For the clean validation split (the model folder's own manifest) and each shift of
`skinlesion.evaluation.shifts` (another camera; another illuminant and exposure; an uncropped circular
dermatoscope aperture): the classifier's balanced accuracy (identity view, no TTA) and the share of lesions
the folder's own not-a-dermoscopic-image check flags. A check that flags many shifted lesions would refuse
other clinics' dermoscopy; a large accuracy drop says the model keys on how HAM10000 was photographed.
Another clinic is never simulated from the test split, so the numbers can be used for choosing.

`--downscale 0.5 0.75` adds rows for the validation photos at lower resolution (`shifts.downscale`, both
sides times the factor): how much of a model's balanced accuracy and melanoma AUC depend on the source
resolution (the HAM10000 copy in ../shared/data is 200 x 150, a third of the published 600 x 450).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from skinlesion.constants import MANIFEST_FILE
from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.evaluation.metrics import binary_auc, macro_auc
from skinlesion.evaluation.ood_retrieval import image_features
from skinlesion.evaluation.shifts import SHIFTS, downscale
from skinlesion.inference.calibration import calibrated_probs
from skinlesion.inference.predictor import Predictor


def ranking_figures(targets: list[int], probs: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """The macro one-vs-rest AUC and, when the model has `mel`, the melanoma one-vs-rest AUC (identity view),
    with evaluate.py's own metric functions."""
    y = np.asarray(targets)
    out = {"macro_auc_no_tta": macro_auc(y, probs)}
    if "mel" in labels:
        out["melanoma_auc_no_tta"] = binary_auc(y == labels.index("mel"), probs[:, labels.index("mel")])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--data", required=True, help="HAM10000 (split by the model folder's manifest)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--downscale", type=float, nargs="*", default=[], metavar="F",
                        help="also score the validation photos at F x their resolution (0 < F < 1)")
    parser.add_argument("--no-shifts", action="store_true", help="skip the clinic shifts (clean and --downscale only)")
    args = parser.parse_args()
    if any(not 0 < f < 1 for f in args.downscale):
        parser.error(f"--downscale factors must be in (0, 1), got {args.downscale}")

    predictor = Predictor.from_pretrained(args.model, use_onnx=False, tta="none")
    detector = predictor.ood_detector
    val = select_split(load_table(args.data), read_manifest(Path(args.model) / MANIFEST_FILE), "val")
    paths = [str(p) for p in val.frame["path"]]
    targets = [list(predictor.label_names).index(label) for label in val.frame["label"]]
    result = {"model": args.model, "n_val": len(paths),
              "detector": None if detector is None else {"method": detector.method, "taps": list(detector.taps),
                                                          "quantile": detector.quantile}}
    shifts = [] if args.no_shifts else list(SHIFTS.items())
    shifts += [(f"downscale_{f:g}", lambda p, i, f=f: downscale(p, f)) for f in args.downscale]
    for name, shift in [("clean", None), *shifts]:
        images = paths if shift is None else [shift(p, i) for i, p in enumerate(paths)]
        logits, features = image_features(predictor, images, batch_size=args.batch_size)
        row = {"balanced_accuracy_no_tta": float(balanced_accuracy_score(targets, logits[0].argmax(1).numpy())),
               # calibrated as the app and evaluate.py serve them: a temperature can reorder one class's probability
               **ranking_figures(targets, calibrated_probs(logits, predictor.loaded.temperature).numpy(),
                                 list(predictor.label_names))}
        if detector is not None:
            scores = detector.score(features, logits[0])
            row["flagged"] = float((scores < detector.threshold).float().mean())
        result[name] = row
        print(name, row, flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
