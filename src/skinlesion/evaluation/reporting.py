"""Evaluation results as files people read: PNG figures and the markdown report.

Everything here draws or formats numbers that evaluation.py already computed; nothing is recomputed.
Matplotlib runs headless (Agg) and each figure is closed after saving, so a long comparison does
not accumulate open figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, *,
                   normalise: bool, title: str) -> Path:
    """Counts, or rows divided by their totals (each row = recall of the true class)."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    shown = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None) if normalise else counts
    size = max(4.0, 0.7 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (1 if normalise else shown.max()) / 2
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            text = f"{shown[i, j]:.2f}" if normalise else f"{int(shown[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > threshold else "black")
    return _save(fig, path)


def plot_roc(curves: dict[str, dict], path: Path, title: str) -> Path:
    """One-vs-rest ROC per class plus the malignant-vs-benign curve (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, c in curves.items():
        style = "--" if name == "malignant" else "-"
        ax.plot(c["fpr"], c["tpr"], style, lw=1.5, label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(before: dict, after: dict, ece_before: float, ece_after: float, temperature: float,
                     path: Path) -> Path:
    """Reliability diagrams side by side: without temperature (T = 1) and with the model's T."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3), sharey=True)
    for ax, bins, ece, label in ((axes[0], before, ece_before, "before (T = 1)"),
                                 (axes[1], after, ece_after, f"after (T = {temperature:.3f})")):
        lower = np.asarray(bins["lower"])
        width = np.asarray(bins["upper"]) - lower
        acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
        conf = np.array([c if c is not None else 0.0 for c in bins["confidence"]])
        filled = np.array([n > 0 for n in bins["count"]])
        ax.bar(lower[filled], acc[filled], width=width[filled], align="edge", edgecolor="black",
               color="tab:blue", alpha=0.8, label="accuracy")
        ax.bar(lower[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
               color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_title(f"{label}: ECE {ece:.3f}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def image_sheet(cells: list[list[Image.Image]], row_titles: Sequence[str], col_titles: Sequence[str],
                path: Path, cell_px: int = 160) -> Path:
    """A grid of images (rows x columns) with titles: CAM overlays per model or per method."""
    plt = _pyplot()
    n_rows, n_cols = len(cells), len(col_titles)
    inch = cell_px / 100
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(inch * n_cols, inch * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(cells):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row) and row[c] is not None:
                ax.imshow(row[c])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
        axes[r][0].text(-0.05, 0.5, row_titles[r], transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(interval) -> str:
    return f" ({fmt(interval[0])}-{fmt(interval[1])})" if interval and interval[0] is not None else ""


def _table(header: Sequence[str], rows: list[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def model_section(report: dict) -> list[str]:
    """Markdown for one model's evaluation."""
    data = report["data"]
    name, source = report["model"]["name"], report["model"]["source"]
    lines = [f"## {name} (TTA `{report['model']['tta']}`)", "", f"- Model: `{source}` ({report['model']['architecture']})."]
    lines += [f"- Data: `{data['path']}` (layout `{data['layout']}`, split `{data['split']}`"
              + (f", manifest `{data['manifest']}`" if data.get("manifest") else "") + f"), {report['n_images']} images.",
              f"- Classes present: {', '.join(report['classes_present'])} of the model's "
              f"{len(report['model_classes'])} ({', '.join(report['model_classes'])}).",
              f"- Labels: {report['label_mapping']['source_labels']}"
              + (f"; `--label-map` {report['label_mapping']['label_map']}" if report['label_mapping']['label_map'] else ""),
              f"- Predictions: {report['prediction_rule']}",
              f"- Temperature {fmt(report['temperature'])}; {report['timing']['n_views']} TTA view(s); "
              f"inference {fmt(report['timing']['inference_seconds'], 1)} s "
              f"({fmt(report['timing']['images_per_second'], 1)} images/s), total {fmt(report['elapsed_seconds'], 1)} s.",
              ""]
    for warning in report.get("warnings", []):
        lines.append(f"> **Note:** {warning}")
    if report.get("warnings"):
        lines.append("")
    ci = report.get("ci95", {})
    mel = report.get("melanoma") or {}
    lines += _table(["metric", "value (95% bootstrap CI)"], [
        ["accuracy", report["accuracy"]],
        ["balanced accuracy", fmt(report["balanced_accuracy"]) + _ci(ci.get("balanced_accuracy"))],
        ["macro F1 / weighted F1", f"{fmt(report['macro_f1'])} / {fmt(report['weighted_f1'])}"],
        ["macro precision / recall", f"{fmt(report['macro_precision'])} / {fmt(report['macro_recall'])}"],
        ["macro AUC (one-vs-rest)", fmt(report["auc_ovr_macro"]) + _ci(ci.get("auc_ovr_macro"))],
        ["malignant-vs-benign AUC", fmt(report["malignant_auc"]) + _ci(ci.get("malignant_auc"))],
        ["melanoma sensitivity / specificity (argmax)",
         f"{fmt(mel.get('sensitivity'))} / {fmt(mel.get('specificity'))}"],
        ["melanoma AUC against each class alone",
         ", ".join(f"{k} {fmt(v)}" for k, v in (mel.get("auc_against") or {}).items()) or "-"],
        ["ECE (15 bins) before / after temperature", f"{fmt(report['ece_before'])} / {fmt(report['ece_after'])}"],
    ])
    lines += _table(["class", "precision", "recall", "F1", "AUC", "support"],
                    [[k, v["precision"], v["recall"], v["f1"], v["auc"], v["support"]]
                     for k, v in report["per_class"].items()])
    classes = report["classes"]
    lines += ["Confusion matrix (rows = true, columns = predicted):", ""]
    lines += _table(["true \\ pred", *classes],
                    [[c, *row] for c, row in zip(classes, report["confusion_matrix"], strict=True)])
    if report.get("calibration_fit"):
        fit = report["calibration_fit"]
        lines += [f"Temperature fitted on the validation split ({fit['n']} images): T = {fmt(fit['temperature'])}, "
                  f"ECE {fmt(fit['ece_before'])} -> {fmt(fit['ece_after'])}; energy OOD threshold "
                  f"{fmt(fit['ood']['threshold'])} (1% of validation images below). Written to the model folder.", ""]
    quality = report.get("explanation_quality")
    if quality:
        lines += [f"### Explanation quality ({quality['n_images']} images, CAM TTA `{quality['cam_tta']}`, "
                  f"explaining the predicted class)", "",
                  "Deletion AUC: lower is better; insertion AUC: higher is better"
                  + ("; energy inside mask and pointing accuracy: higher is better." if quality.get("masks") else "."),
                  ""]
        keys = ["deletion_auc", "insertion_auc", "insertion_minus_deletion"]
        if quality.get("masks"):
            keys += ["energy_inside_mask", "pointing_accuracy"]
        lines += _table(["rank", "method", *keys, "seconds/map"],
                        [[r["rank"], r["method"], *[r.get(k) for k in keys], r["cam_seconds"]]
                         for r in quality["methods"]])
    plots = report.get("plots", {})
    for name in ("confusion_matrix", "confusion_matrix_normalized", "roc_curves", "reliability", "cam_methods"):
        if plots.get(name):
            lines.append(f"![{name}]({plots[name]})")
    return lines + [""]


COMPARISON_COLUMNS = ("model", "tta", "n_views", "n_images", "accuracy", "balanced_accuracy", "macro_f1",
                      "auc_ovr_macro", "malignant_auc", "melanoma_sensitivity", "ece")


def render_markdown(result: dict) -> str:
    """The whole report.md: comparison table first (when there is more than one row), then each model."""
    lines = ["# Evaluation report", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    rows = result.get("comparison", [])
    if len(rows) > 1:
        lines += ["## Comparison", ""]
        lines += _table(COMPARISON_COLUMNS, [[r.get(c) for c in COMPARISON_COLUMNS] for r in rows])
        if result.get("plots", {}).get("cam_comparison"):
            lines += [f"![CAM comparison]({result['plots']['cam_comparison']})", ""]
    for report in result.get("models", []):
        lines += model_section(report)
    return "\n".join(lines)
