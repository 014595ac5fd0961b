"""The model card's evaluation sections, from the reports saved in a model folder (`eval/*/report.json`).

Results per test set (with the command of each), recall per class, calibration, the per-group tables of
`evaluate.py --by` (per test set, and one per-source table across them), what the refusal check measured, and
the limitations each number supports. `card.py` puts them in the card; `scripts/readme_results.py` reuses the
report readers for the README.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.datasets_info import dataset_info


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(report: dict, key: str) -> str:
    ci = report.get(f"{key}_ci95")
    return f" ({ci[0]:.3f}-{ci[1]:.3f})" if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else ""


def melanoma_auc(report: dict):
    return (report.get("per_class", {}).get("mel") or {}).get("auc")


def eval_reports(folder: Path) -> list[tuple[str, dict]]:
    """(name, report) for every `eval/<name>/report.json`, sorted by name."""
    return [(path.parent.name, json.loads(path.read_text())) for path in sorted((folder / "eval").glob("*/report.json"))]


def set_title(report: dict, *, plain: bool = False) -> str:
    """How the card names the data a report scored: 'HAM10000 test split', 'ISIC 2017 `ISIC2017_test`'
    (`plain`: without Markdown, for the front matter)."""
    data = report.get("data", {})
    titles = []
    for layout in str(data.get("layout", "")).split("+"):
        info = dataset_info(layout)
        titles.append(info.title if info else layout)
    title = " + ".join(titles)
    if data.get("split") in ("test", "val"):
        return f"{title} {data['split']} split"
    path = data.get("path")
    names = [Path(str(p).rstrip("/")).name for p in (path if isinstance(path, list) else [path]) if p]
    quote = "" if plain else "`"
    return f"{title} {', '.join(f'{quote}{n}{quote}' for n in names)}" if names else title


def results_lines(reports: list[tuple[str, dict]]) -> list[str]:
    if not reports:
        return ["Not evaluated yet: run `python evaluate.py --model THIS_FOLDER ...` (see the project's README).", ""]
    lines = ["### Results per test set", "",
             "| test set | images | balanced accuracy (95% CI) | accuracy | macro AUC | melanoma AUC | "
             "malignant-vs-benign AUC | ECE |", "|---|---|---|---|---|---|---|---|"]
    for _, r in reports:
        lines.append(f"| {set_title(r)} | {r.get('n_images')} | {fmt(r.get('balanced_accuracy'))}"
                     f"{_ci(r, 'balanced_accuracy')} | {fmt(r.get('accuracy'))} | {fmt(r.get('auc_ovr_macro'))} | "
                     f"{fmt(melanoma_auc(r))} | {fmt(r.get('malignant_auc'))} | {fmt(r.get('ece'))} |")
    lines += ["", "Balanced accuracy is the mean recall over the classes the set holds (a set with fewer classes, "
              "such as ISIC 2017's three, is scored on those: the argmax over its classes). 95% intervals: percentile "
              "bootstrap over images. Each row came from:", ""]
    for name, r in reports:
        if r.get("command"):
            lines += [f"- `eval/{name}`: `{r['command']}`"]
    lines += ["", "Recall per class (images):", "",
              "| class | " + " | ".join(set_title(r) for _, r in reports) + " |",
              "|---|" + "---|" * len(reports)]
    classes = sorted({c for _, r in reports for c in r.get("per_class", {})})
    for c in classes:
        cells = []
        for _, r in reports:
            pc = r.get("per_class", {}).get(c)
            cells.append(f"{fmt(pc.get('recall'))} ({pc.get('support')})" if pc else "—")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def calibration_lines(extras: dict, reports: list[tuple[str, dict]]) -> list[str]:
    calib = extras.get("calibration", {})
    lines = ["### Calibration", "",
             f"- Temperature {fmt(extras.get('temperature'))}, fitted for NLL on the validation split (TTA "
             f"`{calib.get('tta', extras.get('tta'))}`); validation ECE {fmt(calib.get('ece_before'))} -> "
             f"{fmt(calib.get('ece_after'))}."]
    lines += [f"- {set_title(r)}: ECE {fmt(r.get('ece_before'))} before, {fmt(r.get('ece_after'))} after the "
              f"temperature (reliability diagram `eval/{name}/reliability.png`)." for name, r in reports]
    return [*lines, ""]


def group_lines(reports: list[tuple[str, dict]]) -> list[str]:
    """Per-group tables (`evaluate.py --by`) of every report, and one per-source table across the reports."""
    from ..evaluation.groups import groups_markdown, rule_text

    with_groups = [r for _, r in reports if r.get("by")]
    if not with_groups:
        return []
    lines = ["### Where it fails: per group", "",
             "From `evaluate.py --by` (the commands above). Malignant sensitivity is the share of malignant lesions "
             "the app answers with a malignant class; specificity, the share of benign lesions it does not. "
             + rule_text(), ""]
    sources = []
    for r in with_groups:
        for column, entry in r["by"].items():
            if column == "source":
                for g in entry["groups"]:
                    info = dataset_info(g["group"])
                    sources.append({**g, "group": f"{info.title if info else g['group']} ({set_title(r)})"})
                continue
            lines += groups_markdown({column: entry}, heading="####", title=f"{set_title(r)} by", rule=False)
    if sources:
        lines += groups_markdown({"source": {"asked_as": "source", "groups": sources}}, heading="####", title="Per",
                                 rule=False)
    return lines


def ood_measured_lines(folder: Path) -> list[str]:
    """What the evaluation reports measured of the check: false flags per labelled set, flags per folder."""
    lines = []
    for _, report in eval_reports(folder):
        ood = report.get("ood") or {}
        if not ood.get("available"):
            continue
        labelled = ood.get("labelled_set") or {}
        folders = ", ".join(f"{Path(name).name} {fmt(v.get('flag_rate'), 2)}" for name, v in (ood.get("folders") or {}).items())
        lines.append(f"  - {set_title(report)}: false flags (real lesions refused) {fmt(labelled.get('flag_rate'))} of "
                     f"{labelled.get('n_images')} images" + (f"; non-dermoscopic folders flagged: {folders}" if folders else ""))
    return lines


def limitation_lines(reports: list[tuple[str, dict]], sources: list[dict], extras: dict) -> list[str]:
    """Plain statements, each from a number the reports hold."""
    trained_on = {str(s.get("layout") or s.get("name")) for s in sources}
    lines = ["## Limitations", "",
             "- It answers one of its classes for any image; a lesion outside them (e.g. invasive squamous cell "
             "carcinoma, a scar, a wart) gets a confident wrong name.",
             "- Not validated on darker skin types: the training clinics' patients were mostly fair-skinned.",
             "- Trained at low resolution on a CPU; published models trained at higher resolution on more data score "
             "higher."]
    for _, r in reports:
        mel = r.get("melanoma") or {}
        against = mel.get("auc_against") or {}
        other = not set(str(r.get("data", {}).get("layout", "")).split("+")) <= trained_on
        text = (f"- {set_title(r)}" + (" (clinics never seen in training)" if other else "")
                + f": melanoma recall {fmt(mel.get('sensitivity'))}, melanoma AUC {fmt(melanoma_auc(r))}")
        if against:
            text += " (melanoma ranked against " + ", ".join(f"{k} alone {fmt(v)}" for k, v in against.items()) + ")"
        lines.append(text + ".")
        for column, entry in (r.get("by") or {}).items():
            scored = [g for g in entry["groups"] if g.get("malignant_sensitivity") is not None and g["group"] != "unknown"]
            small = [f"{g['group']} ({g['n']})" for g in entry["groups"] if g.get("n", 0) < 30 and g["group"] != "unknown"]
            if column == "source" or (len(scored) < 2 and not small):
                continue
            text = f"  - by {column}:"
            if len(scored) >= 2:
                lo = min(scored, key=lambda g: g["malignant_sensitivity"])
                hi = max(scored, key=lambda g: g["malignant_sensitivity"])
                text += (f" malignant sensitivity from {fmt(lo['malignant_sensitivity'], 2)} ({lo['group']}: "
                         f"{lo.get('n_malignant')} malignant of {lo['n']}) to {fmt(hi['malignant_sensitivity'], 2)} "
                         f"({hi['group']}: {hi.get('n_malignant')} malignant of {hi['n']});")
            if small:
                text += f" too few images to say anything for {', '.join(small)}."
            lines.append(text.rstrip(";") + ("" if text.endswith(".") else "."))
    if extras.get("ood_detector"):
        lines.append("- The not-a-dermoscopic-image check is fitted to the training clinics' images: it refuses more "
                     "real lesions from other clinics (false flags above) and passes some images that are not "
                     "dermoscopy (the folders above).")
    return [*lines, ""]
