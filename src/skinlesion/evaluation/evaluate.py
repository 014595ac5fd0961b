"""Evaluate model folders on a dataset: metrics, calibration, explanation quality, comparison.

`run(EvalConfig)` is the whole of `evaluate.py`. Per model it: loads the Predictor; selects the
images (one or several sources read by `sources.load_sources`; a split of the sources the split manifest
lists, the whole of any other set: `selection.py`); streams them
through the Predictor's preprocessing and `forward_views` (the one place logits are computed) to get
(V, N, K) view logits; optionally fits the temperature and OOD threshold on the validation split and
writes them into the model folder; scores; draws; and scores saliency maps. The same pass yields the
penultimate-layer features, from which the out-of-distribution check's false-flag rate on the labelled
set (and its flag rate on each `ood_folders` folder of non-dermoscopic images) and the similar-cases
retrieval vote (balanced accuracy and melanoma AUC beside the softmax's, precision@k per class; the
evaluated set's own images and lesions excluded from the index) are scored. With `by`, the same
probabilities are scored per group of a metadata column (`groups.py`: sex, age band, site, source,
dx_type). With several models
or `compare_tta`, one comparison table is added. Files are written only by `run` and the
`evaluate_one` / `save_calibration` steps it calls; the data, scoring and fitting functions are pure.
Choosing and streaming the images is `view_logits.py`; the OOD and retrieval scores, `ood_retrieval.py`.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import LesionTable
from ..data.layouts import ISIC2018_TO_HAM, ISIC2019_TO_HAM
from ..data.sources import load_sources
from ..imageio import load_rgb
from ..inference import calibration, cases, tta
from ..models.folder import update_extras
from . import groups, metrics, reporting
from .explain_quality import QualityConfig, evaluate_explanations
from .ood_retrieval import folder_features, ood_report, ood_retrieval_markdown, retrieval_report
from .selection import manifest_for, select_images
from .view_logits import check_labels, collect_view_logits

OOD_QUANTILE = 0.01

# How each layout's own ground truth becomes HAM10000 codes (before any --label-map).
LAYOUT_LABELS = {
    "ham10000": "HAM10000 `dx` codes as they are",
    "isic2017": "ISIC 2017: melanoma=1 -> mel, seborrheic_keratosis=1 -> bkl, neither -> nv",
    "isic2018": "ISIC 2018 one-hot columns: " + ", ".join(f"{k}->{v}" for k, v in ISIC2018_TO_HAM.items()),
    "isic2019": "ISIC 2019 one-hot columns: " + ", ".join(f"{k}->{v}" for k, v in ISIC2019_TO_HAM.items())
                + " (UNK rows dropped)",
    "ph2": "PH2 clinical diagnosis: 0 -> common_nevus, 1 -> atypical_nevus, 2 -> melanoma",
    "imagefolder": "class sub-folder names",
    "hf": "the dataset's label feature",
}


class CalibrationSplitError(ValueError):
    """A temperature / OOD threshold would be fitted on data that is not a validation split."""


@dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation run needs; built once from the command line (see evaluate.py)."""

    models: tuple[str, ...]                      # model folders or Hub ids; the first is the primary
    data: tuple[str, ...]                        # data sources, `PATH[,name=N][,layout=L][,split=S]` (a str = one)
    out: str                                     # output folder for report.json, report.md, PNGs
    layout: str | None = None                    # None = auto-detect (per source)
    split: str | None = None                     # test|val|all; None = test with a manifest, else all (selection.py)
    manifest: str | None = None                  # None = the folder's split_manifest.csv (HAM10000 or data it lists)
    label_map: dict[str, str] = field(default_factory=dict)  # data label -> model label
    tta: str | None = None                       # none|flips|full; None = each model's own setting
    compare_tta: bool = False                    # also report the same pass without TTA (identity view)
    batch_size: int = 64
    workers: int = 2                             # DataLoader processes decoding JPEGs
    bootstrap: int = 1000                        # resamples for the 95% intervals (0 = none)
    seed: int = 0                                # bootstrap and image choice
    fit_temperature: bool = False                # fit T + OOD threshold on the validation split, save them
    cam_methods: tuple[str, ...] = ()            # explanation methods to score (empty = skip)
    cam_images: int = 8                          # images per method
    cam_tta: str = "none"                        # TTA views averaged inside each saliency map
    masks: str | None = None                     # lesion masks for localisation (matched by file stem)
    sheet_images: int = 4                        # images on the side-by-side CAM sheets
    revision: str | None = None                  # Hub revision for Hub ids
    device: str | None = None
    progress: bool = True
    command: str | None = None                   # the command line, recorded in the report
    ood_folders: tuple[str, ...] = ()            # folders of non-dermoscopic images: OOD flag rate of each
    cases_k: int = cases.DEFAULT_K               # k of the retrieval precision@k
    by: tuple[str, ...] = ()                     # metadata columns to report per group (groups.py)

    def __post_init__(self):
        # One path given as a plain string (scripts, tests) is a one-source tuple; normalised once, at construction.
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))


# ---------------------------------------------------------------------------------------------
# Data (choosing the images: selection.py; streaming them: view_logits.py)
# ---------------------------------------------------------------------------------------------

def load_data(cfg: EvalConfig) -> LesionTable:
    """Every `--data` source in one table with a `source` column (one source reads exactly as before)."""
    return load_sources(list(cfg.data), label_map=cfg.label_map, layout=cfg.layout)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def require_validation_split(data_name: str) -> None:
    """Calibration is fitted on the validation split only: fitted on test data, the test ECE means nothing."""
    if data_name != "val":
        raise CalibrationSplitError(
            f"refusing to fit the temperature on {data_name!r}: it must be the validation split (fitting on "
            "test data makes the reported calibration meaningless). Evaluate HAM10000 with its split manifest "
            "(the model folder's split_manifest.csv or --manifest); --fit-temperature fits on its val rows"
        )


def fit_calibration(view_logits: torch.Tensor, targets: torch.Tensor, *, fitted_on: str) -> dict:
    """Temperature (NLL on the TTA-averaged probabilities) and energy OOD threshold from validation logits."""
    require_validation_split(fitted_on)
    y = targets.numpy()
    temperature = calibration.fit_temperature(view_logits, targets)
    threshold = calibration.fit_ood_threshold(calibration.energy_score(view_logits, temperature).numpy(),
                                              quantile=OOD_QUANTILE)
    return {
        "temperature": temperature,
        "ece_before": calibration.expected_calibration_error(calibration.calibrated_probs(view_logits, 1.0).numpy(),
                                                             y, n_bins=metrics.ECE_BINS),
        "ece_after": calibration.expected_calibration_error(
            calibration.calibrated_probs(view_logits, temperature).numpy(), y, n_bins=metrics.ECE_BINS),
        "ood": {"score": "energy", "threshold": threshold, "quantile": OOD_QUANTILE},
        "n": int(y.size),
        "fitted_on": "val",
    }


def save_calibration(folder: Path, fit: dict, mode: str) -> None:
    update_extras(folder, temperature=fit["temperature"], ood=fit["ood"],
                  calibration={"fitted_on": "val", "tta": mode, "ece_before": fit["ece_before"],
                               "ece_after": fit["ece_after"], "n": fit["n"]})


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def score(view_logits: torch.Tensor, targets: torch.Tensor, label_names: list[str], temperature: float, *,
          bootstrap: int = 1000, seed: int = 0) -> dict:
    """Every metric for (V, N, K) view logits: the report's numbers, without file I/O."""
    y = targets.numpy()
    probs = calibration.calibrated_probs(view_logits, temperature).numpy()  # (N, K), TTA-averaged
    raw_probs = calibration.calibrated_probs(view_logits, 1.0).numpy()
    summary = metrics.classification_summary(y, probs, label_names)
    present = summary["classes"]
    restricted = len(present) < len(label_names)
    summary.update({
        "model_classes": list(label_names),
        "classes_present": present,
        "restricted_to_present": restricted,
        "prediction_rule": (
            f"argmax over the {len(present)} classes present in the ground truth ({', '.join(present)}), "
            "their probabilities renormalised; AUCs use the model's own probability of each class; ECE "
            "uses all the model's classes" if restricted else "argmax over all the model's classes"),
        "temperature": float(temperature),
        "ece_before": metrics.expected_calibration_error(raw_probs, y, n_bins=metrics.ECE_BINS),
        "ece_after": summary["ece"],
        "reliability": {"before": metrics.reliability_bins(raw_probs, y), "after": metrics.reliability_bins(probs, y)},
    })
    if bootstrap > 0:
        intervals = metrics.bootstrap_intervals(y, probs, label_names, n_resamples=bootstrap, seed=seed)
        summary["ci95"] = {k: [v["low"], v["high"]] for k, v in intervals.items()}
        for name, interval in summary["ci95"].items():
            summary[f"{name}_ci95"] = interval
        summary["bootstrap"] = {"n_resamples": bootstrap, "seed": seed, "method": "percentile",
                                "n_valid": {k: v["n_valid"] for k, v in intervals.items()}}
    else:
        summary["ci95"] = {}
    warnings = []
    if len(present) < 2:
        warnings.append(f"only one class ({present[0]}) is present: restricted accuracy is trivially 1 and "
                        "AUCs are undefined; see accuracy_all_classes")
    if restricted:
        warnings.append(f"the data holds {len(present)} of the model's {len(label_names)} classes; metrics are "
                        "restricted to those (see prediction_rule)")
    summary["warnings"] = warnings
    return summary


def comparison_row(name: str, source: str, report: dict, mode: str, n_views: int) -> dict:
    mel = report.get("melanoma") or {}
    return {"model": name, "source": source, "tta": mode, "n_views": n_views, "n_images": report["n_images"],
            "accuracy": report["accuracy"], "balanced_accuracy": report["balanced_accuracy"],
            "macro_f1": report["macro_f1"], "auc_ovr_macro": report["auc_ovr_macro"],
            "malignant_auc": report["malignant_auc"], "melanoma_sensitivity": mel.get("sensitivity"),
            "ece": report["ece"]}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def _load_predictor(source: str, cfg: EvalConfig):
    from ..inference.predictor import Predictor

    return Predictor.from_pretrained(source, revision=cfg.revision, device=cfg.device)


def _local_folder(source: str) -> Path | None:
    path = Path(str(source).removeprefix("local-dir:"))
    return path if path.is_dir() else None


def _slug(source: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(source).rstrip("/")).name or str(source)).strip("_") or "model"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}_{i}", i + 1
    used.add(slug)
    return slug


def _json_safe(value):
    """numpy scalars -> Python, NaN/inf -> None, so report.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_plots(report: dict, logits: torch.Tensor, targets: torch.Tensor, label_names: list[str],
                 out: Path, prefix: str) -> dict[str, str]:
    title = f"{report['model']['source']} ({report['data']['split']}, TTA {report['model']['tta']})"
    probs = calibration.calibrated_probs(logits, report["temperature"]).numpy()
    files = {
        "confusion_matrix": reporting.plot_confusion(report["confusion_matrix"], report["classes"],
                                                     out / f"{prefix}confusion_matrix.png", normalise=False,
                                                     title=f"counts: {title}"),
        "confusion_matrix_normalized": reporting.plot_confusion(
            report["confusion_matrix"], report["classes"], out / f"{prefix}confusion_matrix_normalized.png",
            normalise=True, title=f"row-normalised: {title}"),
        "roc_curves": reporting.plot_roc(metrics.roc_curves(targets.numpy(), probs, label_names),
                                         out / f"{prefix}roc_curves.png", title=f"ROC: {title}"),
        "reliability": reporting.plot_reliability(report["reliability"]["before"], report["reliability"]["after"],
                                                  report["ece_before"], report["ece_after"], report["temperature"],
                                                  out / f"{prefix}reliability.png"),
    }
    return {k: str(v.relative_to(out)) for k, v in files.items()}


def _cam_cells(predictor, paths: list[str], method: str, tta_mode: str) -> list:
    return [predictor.explain(load_rgb(p), method=method, tta=tta_mode).overlay for p in paths]


def evaluate_one(source: str, name: str, cfg: EvalConfig, table: LesionTable, out: Path,
                 prefix: str) -> tuple[dict, list[dict], object, LesionTable]:
    """Evaluate one model; returns its report, its comparison rows, the predictor and the rows evaluated."""
    started = time.perf_counter()
    predictor = _load_predictor(source, cfg)
    folder = _local_folder(source)
    check_labels(sorted(set(table.frame["label"])), list(predictor.label_names), cfg.label_map)
    manifest = manifest_for(cfg.manifest, folder, table)
    selected, split, source_record = select_images(table, cfg.split, manifest)
    for column in cfg.by:  # a column the data lacks fails here, before any inference
        groups.resolve_column(column, selected.frame)
    mode = cfg.tta or str(predictor.loaded.extras.get("tta", "none"))
    tta.get_views(mode)  # unknown modes fail here, before any work
    # One pass gives both rows of a TTA comparison: view 0 of every mode is the identity.
    pass_mode = "flips" if cfg.compare_tta and mode == "none" else mode
    load_seconds = time.perf_counter() - started

    fit = None
    if cfg.fit_temperature:
        if folder is None:
            raise CalibrationSplitError(f"--fit-temperature writes into the model folder; {source!r} is not a local "
                                        "folder (download it first)")
        if manifest is None:
            require_validation_split(f"the whole of {table.root} (layout {table.layout}, no split manifest)")
        # Evaluating the val split itself: its logits are the ones to fit on, no second pass.
        val = None if split == "val" else collect_view_logits(
            predictor, select_images(table, "val", manifest)[0], mode, batch_size=cfg.batch_size,
            workers=cfg.workers, progress=cfg.progress)
    logits = collect_view_logits(predictor, selected, pass_mode, batch_size=cfg.batch_size, workers=cfg.workers,
                                 progress=cfg.progress)
    n_views = len(tta.get_views(mode))
    view_logits = logits.logits[:n_views] if pass_mode != mode else logits.logits
    if cfg.fit_temperature:
        val_logits, val_targets = (val.logits, val.targets) if val is not None else (view_logits, logits.targets)
        fit = fit_calibration(val_logits, val_targets, fitted_on="val")
        save_calibration(folder, fit, mode)
        predictor = _load_predictor(source, cfg)  # reload so explanations use the saved extras too
    temperature = fit["temperature"] if fit else predictor.loaded.temperature

    t0 = time.perf_counter()
    report = score(view_logits, logits.targets, list(predictor.label_names), temperature,
                   bootstrap=cfg.bootstrap, seed=cfg.seed)
    if cfg.by:
        probs = calibration.calibrated_probs(view_logits, temperature).numpy()
        report["by"] = groups.by_groups(selected.frame, logits.targets.numpy(), probs, list(predictor.label_names),
                                        cfg.by, bootstrap=cfg.bootstrap, seed=cfg.seed)
        report["by_rule"] = groups.rule_text()
    metric_seconds = time.perf_counter() - t0
    report["model"] = {"name": name, "source": str(source), "architecture": predictor.loaded.architecture, "tta": mode,
                       "temperature": temperature, "preprocessing": predictor.preprocessing.as_dict()}
    report["data"] = {"path": cfg.data[0] if len(cfg.data) == 1 else list(cfg.data), "layout": table.layout,
                      "split": split, "manifest": str(manifest) if manifest else None,
                      "n_images": int(len(selected.frame)), "problems": selected.problems[:20],
                      **({"sources": source_record} if source_record else {})}
    report["label_mapping"] = {"source_labels": "; ".join(LAYOUT_LABELS.get(layout, layout)
                                                          for layout in table.layout.split("+")),
                               "label_map": dict(cfg.label_map),
                               "counts": {k: int(v) for k, v in selected.frame["label"].value_counts().sort_index().items()}}
    if fit:
        report["calibration_fit"] = fit
    folder_outputs = {}
    for ood_folder in cfg.ood_folders:
        _, folder_logits, folder_feats = folder_features(predictor, ood_folder, batch_size=cfg.batch_size)
        folder_outputs[str(ood_folder)] = (folder_logits, folder_feats)
    report["ood"] = ood_report(predictor, view_logits, logits.features, folder_outputs)
    report["retrieval"] = retrieval_report(predictor, view_logits, logits.features, logits.targets, selected,
                                           temperature, k=cfg.cases_k, bootstrap=cfg.bootstrap, seed=cfg.seed)
    rows = [comparison_row(name, str(source), report, mode, n_views)]
    if cfg.compare_tta:
        other = "none" if mode != "none" else pass_mode
        other_logits = logits.logits[:1] if other == "none" else logits.logits
        other_report = score(other_logits, logits.targets, list(predictor.label_names), temperature, bootstrap=0)
        rows.append(comparison_row(name, str(source), other_report, other, other_logits.shape[0]))
        rows.sort(key=lambda r: r["n_views"])

    plots = _write_plots(report, view_logits, logits.targets, list(predictor.label_names), out, prefix)
    if cfg.cam_methods:
        quality_cfg = QualityConfig(methods=cfg.cam_methods, n_images=cfg.cam_images, cam_tta=cfg.cam_tta,
                                    masks=cfg.masks, seed=cfg.seed)
        report["explanation_quality"] = evaluate_explanations(predictor, selected, quality_cfg, temperature)
        chosen = [str(selected.frame["path"].iloc[i]) for i in range(min(cfg.sheet_images, len(selected.frame)))]
        cells = [[load_rgb(p)] for p in chosen]
        for method in cfg.cam_methods:
            for row, overlay in zip(cells, _cam_cells(predictor, chosen, method, cfg.cam_tta), strict=True):
                row.append(overlay)
        plots["cam_methods"] = str(reporting.image_sheet(
            cells, [Path(p).name for p in chosen], ["image", *cfg.cam_methods], out / f"{prefix}cam_methods.png"
        ).relative_to(out))
    report["plots"] = plots
    total = time.perf_counter() - started
    report["timing"] = {"load_seconds": load_seconds, "inference_seconds": logits.seconds,
                        "metrics_seconds": metric_seconds, "total_seconds": total, "n_views": n_views,
                        "pass_views": int(logits.logits.shape[0]),
                        "images_per_second": len(selected.frame) / max(logits.seconds, 1e-9),
                        "batch_size": cfg.batch_size, "workers": cfg.workers, "torch_threads": torch.get_num_threads()}
    report["elapsed_seconds"] = total
    return report, rows, predictor, selected


def run(cfg: EvalConfig) -> dict:
    """Evaluate every model in `cfg.models` on `cfg.data`; write report.json, report.md and the PNGs."""
    if not cfg.models:
        raise ValueError("give at least one --model")
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = load_data(cfg)
    used: set[str] = set()
    reports, rows, predictors, selections = [], [], [], []
    slugs = [_slug(source, used) for source in cfg.models]
    for i, source in enumerate(cfg.models):
        # The primary model's figures sit beside report.json; the others' in a folder each.
        prefix = "" if i == 0 else f"{slugs[i]}/"
        report, model_rows, predictor, selected = evaluate_one(source, slugs[i], cfg, table, out, prefix)
        reports.append(report)
        rows.extend(model_rows)
        predictors.append(predictor)
        selections.append(selected)

    result = dict(reports[0])  # the primary model's keys at top level
    result.update({"command": cfg.command, "config": asdict(cfg), "models": reports, "comparison": rows})
    if len(cfg.models) > 1:
        # Only images every model evaluated can sit side by side.
        common = set(selections[0].frame["path"])
        for s in selections[1:]:
            common &= set(s.frame["path"])
        paths = [p for p in selections[0].frame["path"] if p in common][: cfg.sheet_images]
        method = cfg.cam_methods[0] if cfg.cam_methods else "gradcam"
        cells = [[load_rgb(p)] for p in paths]
        for predictor in predictors:
            for row, overlay in zip(cells, _cam_cells(predictor, paths, method, cfg.cam_tta), strict=True):
                row.append(overlay)
        sheet = reporting.image_sheet(cells, [Path(p).name for p in paths],
                                      ["image", *slugs],
                                      out / "cam_comparison.png")
        result["plots"] = {**result["plots"], "cam_comparison": str(sheet.relative_to(out))}
    result["elapsed_seconds"] = time.perf_counter() - started
    result = _json_safe(result)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    extra = "".join(ood_retrieval_markdown(r) for r in result["models"])
    if result.get("by"):  # the primary model's per-group tables
        extra += "\n" + "\n".join(["## Per group", "", *groups.groups_markdown(result["by"], heading="###")])
    (out / "report.md").write_text(reporting.render_markdown(result) + extra)
    return result


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "python evaluate.py " + " ".join(shlex.quote(a) for a in args)
