"""Turn a training checkpoint (e.g. the last epoch's EMA weights) into a model folder beside the run's own.

    python scripts/export_checkpoint.py --run runs/r18_80 --out runs/r18_80_last [--checkpoint STEP_DIR] [--raw] [--half]

train.py keeps the epoch with the best validation balanced accuracy *without TTA*; on a noisy ~1,000-image
validation split that is often a mid-training epoch at high learning rate, while the end of the cosine
schedule has lower validation loss. Exporting the last checkpoint lets `choose_input_size.py` and
`evaluate.py --split val` compare both with the TTA the model ships with, still on the validation split.
The exported folder keeps the run's config (architecture, preprocessing, training config), takes the
checkpoint's EMA weights (or the raw weights with --raw), and records that epoch's validation row from
history.csv; temperature and OOD threshold are reset: refit them with `evaluate.py --fit-temperature`.
--half stores float16 weights (half the size: a ResNet-18 fits the 30 MB budget of weights/); the
model folder loader casts them back to float32, so inference is unchanged up to rounding.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from skinlesion.constants import MANIFEST_FILE
from skinlesion.models.folder import MODEL_CONFIG_FILE, SECTION, load_model_folder, save_model_folder
from skinlesion.training.checkpoint import latest_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train.py output folder (model folder + checkpoints/)")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", help="a checkpoint step folder (default: the run's latest complete one)")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--half", action="store_true", help="store float16 weights")
    args = p.parse_args()

    run, out = Path(args.run), Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run}/checkpoints: no complete checkpoint to export")
    weights = ckpt / ("model.safetensors" if args.raw else "ema.safetensors")
    if not weights.is_file():
        raise SystemExit(f"{weights}: missing (a run without EMA has only model.safetensors: pass --raw)")
    template = load_model_folder(run)  # also checks that the run folder is complete and consistent
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    if state.get("batch", 0):
        raise SystemExit(f"{ckpt} was saved mid-epoch (batch {state['batch']}); export an end-of-epoch checkpoint")
    epoch = int(state["epoch"])  # epochs completed
    history = list(csv.DictReader((run / "history.csv").open()))
    row = next((r for r in history if int(r["epoch"]) == epoch), {})
    config = json.loads((run / MODEL_CONFIG_FILE).read_text())
    extras = {k: v for k, v in config.get(SECTION, {}).items() if k not in ("calibration", "ood", "format_version")}
    extras.update(temperature=1.0, exported_from=f"{ckpt.name} ({'raw' if args.raw else 'EMA'} weights)",
                  val_metrics={**{k: float(v) for k, v in row.items() if k.startswith("val_")}, "epoch": epoch})
    model = template.model
    model.load_state_dict(load_file(str(weights)), strict=True)
    if args.half:
        model.half()
    save_model_folder(out, model, architecture=template.architecture, label_names=list(template.label_names),
                      preprocessing=template.preprocessing, model_args=config.get("model_args", {}), extras=extras)
    for name in (MANIFEST_FILE, "history.csv", "history.png"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    print(f"exported {weights} (epoch {epoch}) to {out}; refit the temperature on the validation split next")


if __name__ == "__main__":
    main()
