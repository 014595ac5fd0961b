"""Pick the test-time input size of a trained model on its validation split (never on test data).

    python scripts/choose_input_size.py --model runs/r18_80 --data ../shared/data/HAM10000 --sizes 80 96 112 [--write]

Training crops (RandomResizedCrop, area 0.35-1) show lesions larger than the eval centre crop does, so
a from-scratch CNN often scores better when evaluated a little above its training size ("FixRes",
Touvron et al. 2019). This scores the validation split (the model folder's manifest, its own TTA
mode) at each size and prints balanced accuracy, accuracy and NLL. --write stores the best size in
config.json and resets the temperature: refit it afterwards with `evaluate.py --fit-temperature`.
Sizes whose balanced accuracy is within --tie of the best count as tied (on ~1,000 validation images
with classes of 12-16 lesions its standard error is ~0.03); among them the lowest NLL wins, since NLL,
a proper scoring rule, also rewards the calibration the app shows.
--fov-crop / --no-fov-crop score (and --write stores) the sizes with the dermatoscope field-of-view crop
on or off (`Preprocessing.fov_crop`; default: as the folder has it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from skinlesion.constants import MANIFEST_FILE
from skinlesion.data import load_table, read_manifest, select_split
from skinlesion.evaluation import metrics
from skinlesion.evaluation.view_logits import collect_view_logits
from skinlesion.inference import calibration
from skinlesion.inference.predictor import Predictor
from skinlesion.models.folder import load_model_folder, set_preprocessing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model folder with its split_manifest.csv")
    p.add_argument("--data", required=True)
    p.add_argument("--sizes", type=int, nargs="+", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tie", type=float, default=0.005, help="balanced-accuracy margin treated as a tie")
    p.add_argument("--write", action="store_true", help="store the best size in the model folder")
    p.add_argument("--fov-crop", action=argparse.BooleanOptionalAction, default=None,
                   help="crop to a dermatoscope's field of view first (default: as the folder has it)")
    args = p.parse_args()

    folder = Path(args.model)
    loaded = load_model_folder(folder)
    table = select_split(load_table(args.data), read_manifest(folder / MANIFEST_FILE), "val")
    stored, trained_at = loaded.preprocessing, loaded.preprocessing.input_size
    if args.fov_crop is not None:
        loaded = dataclasses.replace(loaded, preprocessing=dataclasses.replace(loaded.preprocessing,
                                                                              fov_crop=args.fov_crop))
    rows = []
    for size in args.sizes:
        pre = dataclasses.replace(loaded.preprocessing, input_size=size)
        predictor = Predictor(dataclasses.replace(loaded, preprocessing=pre))
        views = collect_view_logits(predictor, table, predictor.tta, batch_size=64, workers=args.workers,
                                    progress=False)
        probs = calibration.calibrated_probs(views.logits, 1.0)
        y = views.targets
        summary = metrics.classification_summary(y.numpy(), probs.numpy(), list(loaded.label_names))
        nll = float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y))
        rows.append({"input_size": size, "balanced_accuracy": summary["balanced_accuracy"],
                     "accuracy": summary["accuracy"], "nll": nll})
        print(json.dumps(rows[-1]), flush=True)
    top = max(r["balanced_accuracy"] for r in rows)
    best = min((r for r in rows if r["balanced_accuracy"] >= top - args.tie), key=lambda r: r["nll"])
    print(f"trained at {trained_at}; best on validation ({len(table.frame)} images, TTA {predictor.tta}): "
          f"{best['input_size']} px, balanced accuracy {best['balanced_accuracy']:.4f}, NLL {best['nll']:.4f} "
          f"(ties within {args.tie} broken by NLL; field-of-view crop {'on' if loaded.preprocessing.fov_crop else 'off'})")
    chosen = dataclasses.replace(loaded.preprocessing, input_size=best["input_size"])
    if args.write and chosen != stored:
        set_preprocessing(folder, chosen)
        print(f"wrote input_size {best['input_size']}, fov_crop {chosen.fov_crop} to {folder}/config.json; "
              "now refit the temperature and the feature extras")


if __name__ == "__main__":
    main()
