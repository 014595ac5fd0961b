"""Train several recipes under the same CPU budget and write a comparison table.

    python scripts/compare_candidates.py --data ../shared/data/HAM10000 --out runs/candidates \
        --epochs 6 --limit-train-batches 60 recipes/candidate_*.yaml

Every candidate uses the same lesion-grouped split (one manifest, made once), seed, batch size and
number of optimiser steps; the table reports validation balanced accuracy (no TTA) and wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from skinlesion.config import TrainConfig, load_recipe
from skinlesion.data import lesion_grouped_split, load_table, read_duplicate_pairs, write_manifest
from skinlesion.training import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit-train-batches", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "split_manifest.csv"
    if not manifest.exists():
        table = load_table(args.data)
        dup = Path(table.root) / "duplicate_lesion_pairs.csv"
        write_manifest(lesion_grouped_split(table, val=0.1, test=0.1, seed=args.seed,
                                            duplicate_pairs=read_duplicate_pairs(dup) if dup.exists() else None), manifest)
    rows = []
    results_path = out / "results.json"
    if results_path.exists():
        rows = json.loads(results_path.read_text())
    done = {r["recipe"] for r in rows}
    for recipe in args.recipes:
        if recipe in done:
            continue
        values = load_recipe(recipe)
        name = Path(recipe).stem
        cfg = TrainConfig.from_dict({**values, "data": args.data, "manifest": str(manifest), "epochs": args.epochs,
                                     "limit_train_batches": args.limit_train_batches, "batch_size": args.batch_size,
                                     "seed": args.seed, "output_dir": str(out / name), "progress": False,
                                     "early_stopping": 0, "workers": 1})
        t0 = time.time()
        summary = train(cfg)
        rows.append({"recipe": recipe, "model": cfg.model, "image_size": cfg.image_size, "loss": cfg.loss,
                     "sampling": cfg.sampling, "val_balanced_accuracy": summary["best"]["val_balanced_accuracy"],
                     "val_accuracy": summary["best"]["val_accuracy"], "best_epoch": summary["best"]["epoch"],
                     "minutes": round((time.time() - t0) / 60, 1)})
        results_path.write_text(json.dumps(rows, indent=2))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"Budget: {args.epochs} x {args.limit_train_batches} batches of {args.batch_size}, seed {args.seed}; {machine}", "",
             "| recipe | model | px | loss | sampling | val bal. acc. | val acc. | minutes |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["val_balanced_accuracy"]):
        lines.append(f"| {Path(r['recipe']).stem} | {r['model']} | {r['image_size']} | {r['loss']} | {r['sampling']} | "
                     f"{r['val_balanced_accuracy']:.3f} | {r['val_accuracy']:.3f} | {r['minutes']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
