"""Train several recipes under the same CPU budget and write a comparison table.

    python scripts/compare_candidates.py --data ../shared/data/HAM10000 --out runs/candidates \
        --epochs 4 --limit-train-batches 50 recipes/candidate_*.yaml

Every candidate uses the same lesion-grouped split (one manifest, made once), seed, batch size and
number of optimiser steps (the same number of training images seen), one torch thread and one loader
worker; the table reports validation balanced accuracy (no TTA), wall time and CPU time. CPU time
(this process and its finished loader workers) is what to compare when the machine is shared: wall
time then depends on the other load. A killed comparison resumes: finished candidates are kept in
results.json and an interrupted one continues from its last checkpoint. Several comparisons may share
one --out (e.g. one process per core, each with its own recipes): results.json is updated under a file
lock and the table lists every finished candidate.

--external DATA also scores every candidate (no TTA) on a dataset from another clinic, e.g.
../shared/data/ISIC2017_test, on the classes it has: validation accuracy alone cannot show which
choices transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from skinlesion.data import lesion_grouped_split, load_table, read_duplicate_pairs, write_manifest
from skinlesion.evaluation.evaluate import EvalConfig, run
from skinlesion.training.config import TrainConfig, load_recipe
from skinlesion.training.loop import train


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _score_external(folder: Path, data: str) -> dict:
    report = run(EvalConfig(models=(str(folder),), data=data, out=str(folder / "external"), tta="none",
                            bootstrap=0, workers=1, progress=False))
    return {"external_balanced_accuracy": report["balanced_accuracy"],
            "external_melanoma_auc": report["per_class"].get("mel", {}).get("auc")}


@contextlib.contextmanager
def _lock(results_path: Path):
    with open(results_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_rows(results_path: Path) -> list[dict]:
    return json.loads(results_path.read_text()) if results_path.exists() else []


def _upsert(results_path: Path, row: dict) -> list[dict]:
    """Read-modify-write results.json under a lock, so parallel comparisons sharing --out keep every row."""
    with _lock(results_path):
        rows = [r for r in _read_rows(results_path) if r["recipe"] != row["recipe"]] + [row]
        tmp = results_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, results_path)  # readers never see half a file, so they need no lock
    return rows


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit-train-batches", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--external", help="another clinic's labelled images to score each candidate on")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "split_manifest.csv"
    if not manifest.exists():
        table = load_table(args.data)
        dup = Path(table.root) / "duplicate_lesion_pairs.csv"
        tmp = out / f".split_manifest.{os.getpid()}.csv"
        write_manifest(lesion_grouped_split(table, val=0.1, test=0.1, seed=args.seed,
                                            duplicate_pairs=read_duplicate_pairs(dup) if dup.exists() else None), tmp)
        os.replace(tmp, manifest)  # a parallel comparison never reads half a manifest
    results_path = out / "results.json"
    rows = _read_rows(results_path)
    done = {r["recipe"] for r in rows}
    for recipe in args.recipes:
        if recipe in done:
            continue
        values = load_recipe(recipe)
        name = Path(recipe).stem
        cfg = TrainConfig.from_dict({**values, "data": args.data, "manifest": str(manifest), "epochs": args.epochs,
                                     "limit_train_batches": args.limit_train_batches, "batch_size": args.batch_size,
                                     "seed": args.seed, "output_dir": str(out / name), "progress": False,
                                     "early_stopping": 0, "workers": 1, "resume": True})
        t0, cpu0 = time.time(), _cpu_seconds()
        summary = train(cfg)
        row = {"recipe": recipe, "model": cfg.model, "image_size": cfg.image_size, "loss": cfg.loss,
               "sampling": cfg.sampling, "color_constancy": cfg.color_constancy,
               "val_balanced_accuracy": summary["best"]["val_balanced_accuracy"],
               "val_accuracy": summary["best"]["val_accuracy"], "best_epoch": summary["best"]["epoch"],
               "minutes": round((time.time() - t0) / 60, 1),
               "cpu_minutes": round((_cpu_seconds() - cpu0) / 60, 1)}
        if args.external:
            row.update(external=args.external, **_score_external(out / name, args.external))
        rows = _upsert(results_path, row)
    if args.external:  # this process's candidates that finished before --external was given
        for r in [r for r in rows if r["recipe"] in args.recipes and r.get("external") != args.external]:
            r.update(external=args.external, **_score_external(out / Path(r["recipe"]).stem, args.external))
            rows = _upsert(results_path, r)
    rows = _read_rows(results_path)  # the table shows parallel comparisons' rows too
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"Budget: {args.epochs} x {args.limit_train_batches} batches of {args.batch_size}, seed {args.seed}; {machine}", "",
             "| recipe | model | px | loss | sampling | colour const. | val bal. acc. | val acc. | wall min | CPU min | ext. bal. acc. | ext. mel AUC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["val_balanced_accuracy"]):
        lines.append(f"| {Path(r['recipe']).stem} | {r['model']} | {r['image_size']} | {r['loss']} | {r['sampling']} | "
                     f"{r.get('color_constancy', 'none')} | "
                     f"{r['val_balanced_accuracy']:.3f} | {r['val_accuracy']:.3f} | {r['minutes']} | {r.get('cpu_minutes', '')} | "
                     f"{_fmt(r.get('external_balanced_accuracy'))} | {_fmt(r.get('external_melanoma_auc'))} |")
    if args.external:
        lines.append(f"\next. = {args.external}, no TTA, scored on the classes it has")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
