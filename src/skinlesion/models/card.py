"""The model card (README.md of a model folder), rendered from what the folder itself records.

Numbers come only from the config (validation metrics, calibration) and from evaluation reports
saved beside it (`eval/*/report.json` written by evaluate.py), never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..constants import MODEL_CONFIG_FILE
from ..taxonomy import describe_label

LICENCE_NOTE = (
    "Trained on HAM10000 (Tschandl, Rosendahl, Kittler, *Sci Data* 5, 180161, 2018), licensed CC BY-NC-SA 4.0: "
    "the weights inherit its non-commercial, share-alike terms."
)


# Exactly what the card (and the README) tell plain-timm users; tests run these lines.
PLAIN_TIMM_LINES = (
    "import timm",
    "import skinlesion.models  # registers densenet201_se, lesion_cnn and feature_ensemble with timm (other architectures need no import)",
    "model = timm.create_model('local-dir:PATH', pretrained=True)",
)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _eval_sections(folder: Path) -> list[str]:
    lines: list[str] = []
    for report_path in sorted((folder / "eval").glob("*/report.json")):
        report = json.loads(report_path.read_text())
        name = report_path.parent.name
        lines += [f"### {name}", ""]
        if report.get("command"):
            lines += ["```", report["command"], "```", ""]
        ci = report.get("balanced_accuracy_ci95") or report.get("bootstrap", {}).get("balanced_accuracy")
        ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        lines += [
            "| metric | value |", "|---|---|",
            f"| images | {report.get('n_images')} |",
            f"| classes present | {', '.join(report.get('classes_present', report.get('classes', [])))} |",
            f"| balanced accuracy | {_fmt(report.get('balanced_accuracy'))}{ci_txt} |",
            f"| accuracy | {_fmt(report.get('accuracy'))} |",
            f"| macro AUC (one-vs-rest) | {_fmt(report.get('auc_ovr_macro'))} |",
            f"| melanoma AUC | {_fmt((report.get('per_class', {}).get('mel') or {}).get('auc'))} |",
            f"| malignant-vs-benign AUC | {_fmt(report.get('malignant_auc'))} |",
            f"| ECE before / after temperature | {_fmt(report.get('ece_before'))} / {_fmt(report.get('ece'))} |",
            "",
        ]
        per_class = report.get("per_class", {})
        if per_class:
            lines += ["| class | recall | support |", "|---|---|---|"]
            lines += [f"| {k} | {_fmt(v.get('recall'))} | {v.get('support')} |" for k, v in per_class.items()]
            lines.append("")
    return lines


# The project's floors for a shipped model, per evaluation report (eval/<name>/report.json):
# the HAM10000 test split (lesion-grouped, flip TTA) and ISIC 2017 (other clinics, never trained or tuned on).
QUALITY_BARS = {
    "ham10000_test": (("balanced accuracy", "balanced_accuracy", 0.75, ">="),
                      ("melanoma AUC (one-vs-rest)", "mel_auc", 0.90, ">="),
                      ("ECE after calibration", "ece", 0.05, "<=")),
    "isic2017_test": (("balanced accuracy", "balanced_accuracy", 0.55, ">="),
                      ("melanoma AUC (one-vs-rest)", "mel_auc", 0.65, ">=")),
}


def _quality_bars(folder: Path) -> list[str]:
    rows, missed = [], []
    for report_name, bars in QUALITY_BARS.items():
        path = folder / "eval" / report_name / "report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        values = {"balanced_accuracy": report.get("balanced_accuracy"), "ece": report.get("ece"),
                  "mel_auc": (report.get("per_class", {}).get("mel") or {}).get("auc")}
        for name, key, floor, op in bars:
            value = values[key]
            met = value is not None and (value >= floor if op == ">=" else value <= floor)
            if not met:
                missed.append(f"{name} ({report_name})")
            shown = "n/a" if value is None else f"{value:.4f}"  # 4 places: a miss by 0.0001 must not read as "0.050, no"
            rows.append(f"| {report_name} | {name} | {op} {floor} | {shown} | {'yes' if met else '**no**'} |")
    if not rows:
        return []
    lines = ["## Quality bars", "", "| set | bar | floor | reached | met |", "|---|---|---|---|---|", *rows, ""]
    if missed:
        lines += [f"**This model does not reach the floor for: {', '.join(missed)}.** It is shipped because it is "
                  "the best model trained so far within the compute available; treat its outputs accordingly.", ""]
    return lines


def _training_time(folder: Path) -> list[str]:
    path = folder / "train_summary.json"
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    machine = summary.get("machine", "machine not recorded")
    minutes = summary.get("train_minutes")
    lines = [f"- Training time: {minutes} min for {summary.get('epochs_run')} epochs ({machine})." if minutes is not None
             else f"- Training time: not recorded for every member ({summary.get('epochs_run')} epochs)."]
    if summary.get("command"):
        lines.append(f"- Command: `{summary['command']}`")
    lines += [f"- Member {i} was trained with: `{c}`" for i, c in enumerate(summary.get("member_commands", []))]
    lines += [f"- Then: `{c}`" for c in summary.get("post_training", [])]  # export, serving size, calibration
    return lines


def _start_weights(extras: dict, train_cfg: dict) -> str:
    """Where training started, from config.json's record (file + sha256, Hub tag, or scratch)."""
    init = extras.get("init_weights") or {}
    source = init.get("source")
    if source == "file":
        return f"ImageNet-1k weights in `{init.get('file')}` (sha256 `{init.get('sha256')}`)"
    if source == "hub" or (source is None and train_cfg.get("pretrained")):
        return f"ImageNet-1k weights (Hub tag `{init.get('tag', train_cfg.get('model'))}`)"
    if source == "init_from":
        return f"our model `{init.get('model')}`"
    return "scratch (no pretrained weights)"


def _ensemble_lines(record: dict, size: int) -> list[str]:
    """Training section of a `feature_ensemble` folder: how the members were combined, then each member."""
    members = record.get("members", [])
    lines = [f"- An ensemble of {len(members)} fine-tuned networks, combined without further training "
             f"(`skinlesion ensemble`), served at {size} px: the logits are the members' calibrated logits "
             "weighted and summed (their geometric-mean ensemble), then one temperature of its own."]
    for i, m in enumerate(members):
        train = m.get("train_config", {})
        lines.append(
            f"- Member {i}: `{m.get('architecture')}` from {_start_weights({'init_weights': m.get('init_weights')}, train)}, "
            f"trained on {train.get('image_size', '?')} px crops for {train.get('epochs', '?')} epochs max, loss "
            f"`{train.get('loss')}`, sampling `{train.get('sampling')}`"
            + (f" (power {train['sampling_power']})" if train.get("sampling_power", 1.0) != 1.0 else "")
            + f", seed {train.get('seed')}; weight "
            f"{_fmt(m.get('weight'), 2)}, temperature {_fmt(m.get('temperature'))}, best validation balanced accuracy "
            f"{_fmt(m.get('val_balanced_accuracy'))} (no TTA, its own training size); weights sha256 "
            f"`{str(m.get('weights_sha256'))[:12]}…`.")
    return lines  # the command that combined them: train_summary.json's, under "Training time"


def _input_size_note(train_cfg: dict, size: int) -> str:
    trained = train_cfg.get("image_size", size)
    if trained == size:
        return f"input {size} px"
    # scripts/choose_input_size.py: the serving size was picked on the validation split.
    return f"trained on {trained} px crops, served at {size} px (chosen on the validation split)"


def _ood_measured_lines(folder: Path) -> list[str]:
    """What the evaluation reports measured of the check: false flags per labelled set, flags per folder."""
    lines = []
    for report_path in sorted((folder / "eval").glob("*/report.json")):
        ood = json.loads(report_path.read_text()).get("ood") or {}
        if not ood.get("available"):
            continue
        labelled = ood.get("labelled_set") or {}
        folders = ", ".join(f"{Path(name).name} {_fmt(v.get('flag_rate'), 2)}" for name, v in (ood.get("folders") or {}).items())
        lines.append(f"  - {report_path.parent.name}: false flags {_fmt(labelled.get('flag_rate'))} of "
                     f"{labelled.get('n_images')} images" + (f"; non-dermoscopic folders flagged: {folders}" if folders else ""))
    return lines


def _feature_extras_lines(extras: dict, folder: Path) -> list[str]:
    """The out-of-distribution check and the similar-cases index, when fitted (`skinlesion fit-features`)."""
    detector, index = extras.get("ood_detector"), extras.get("case_index")
    fit = "`skinlesion fit-features --model FOLDER --data DATA`"
    lines = ["## Not a dermoscopic image? Similar cases", ""]
    if detector:
        taps = (detector.get("params") or {}).get("taps") or []
        fov_crop = bool(extras.get("fov_crop"))  # transforms.FovCrop removes the surround before the check
        where = "penultimate-layer features" + (f" and the spatial mean/std of blocks {', '.join(f'`{t}`' for t in taps)}"
                                                if taps else "")
        lines.append(f"- `{detector.get('file')}`: out-of-distribution statistics, `{detector.get('method')}` on the "
                     f"{where} of the training split; an image scoring below "
                     f"{_fmt(detector.get('threshold'), 4)} (the {_fmt(100 * (detector.get('quantile') or 0), 2)}% "
                     "quantile of the validation split) is refused as not dermoscopic.")
        # measured in README "Not a dermoscopic image?" (scripts/measure_ood.py, aperture shift)
        if taps and not fov_crop:
            lines.append("- Known limitation: the block statistics also respond to an uncropped dermatoscope's black "
                         "circular field of view, so such lesion images are often refused; crop inside the circle.")
        elif taps:
            lines.append("- An uncropped dermatoscope's black circular surround is cropped away before the check "
                         "(`fov_crop`); the block statistics would otherwise read it as evidence against a lesion.")
        lines += _ood_measured_lines(folder)
    else:
        lines.append(f"- No out-of-distribution statistics: the not-a-dermoscopic-image check is off (fit with {fit}).")
    if index:
        lines.append(f"- `{index.get('file')}`: similar-cases index of {index.get('n_cases')} training images "
                     f"({index.get('n_lesions')} lesions), {index.get('dims')}-d PCA of the L2-normalised features, "
                     "with image ids, diagnoses, `dx_type` and lesion ids (no pixels); built from split manifest "
                     f"`{str(index.get('manifest_sha256'))[:12]}…`.")
    else:
        lines.append(f"- No similar-cases index (build it with {fit}).")
    return [*lines, ""]


def render_model_card(folder: str | Path) -> str:
    folder = Path(folder)
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    extras = config.get("skinlesion", {})
    train_cfg = extras.get("train_config", {})
    val = extras.get("val_metrics", {})
    calib = extras.get("calibration", {})
    labels = config["label_names"]
    size = config["pretrained_cfg"]["input_size"][-1]
    lines = [
        "---",
        "library_name: timm",
        "license: cc-by-nc-sa-4.0",
        "pipeline_tag: image-classification",
        "tags: [image-classification, timm, dermatology, skin-lesion, ham10000]",
        "datasets: [HAM10000]" if "ham" in str(train_cfg.get("data", "")).lower() else "datasets: []",
        "---",
        "",
        f"# Skin-lesion classifier: `{config['architecture']}`, {len(labels)} classes, {size} px",
        "",
        "**Research demo, not a medical device.** It must not be used to diagnose, treat or triage anyone. "
        "A dermatologist examines the whole patient; this model sees one low-resolution picture.",
        "",
        "## Classes",
        "",
        "| code | name | malignant |",
        "|---|---|---|",
        *[f"| {c} | {describe_label(c).name} | {'yes' if describe_label(c).malignant else 'no'} |" for c in labels],
        "",
        "## Use",
        "",
        "```python",
        "from skinlesion import Predictor",
        "p = Predictor.from_pretrained('PATH_OR_HUB_ID')",
        "print(p.predict('lesion.jpg').to_dict())",
        "```",
        "",
        "The folder also loads in plain timm:",
        "",
        "```python",
        *PLAIN_TIMM_LINES,
        "```",
        *([
            "",
            "Preprocessing includes Shades-of-Gray colour constancy (`skinlesion.color_constancy` in `config.json`): "
            "`Predictor` applies it; timm's own `create_transform` does not know it, so with plain timm apply "
            "`skinlesion.data.transforms.ShadesOfGray` to the uint8 image before normalising.",
        ] if config.get("skinlesion", {}).get("color_constancy", "none") != "none" else []),
        *([
            "",
            "Preprocessing first crops a photo that shows a dermatoscope's black circular surround to the largest "
            "square inside its field of view (`skinlesion.fov_crop` in `config.json`; photos without one are "
            "untouched): `Predictor` does it; with plain timm apply `skinlesion.data.transforms.FovCrop` to the "
            "uint8 image first.",
        ] if config.get("skinlesion", {}).get("fov_crop") else []),
        "",
        "## Training",
        "",
        *(_ensemble_lines(extras["ensemble"], size) if extras.get("ensemble") else [
            f"- Architecture `{config['architecture']}` trained from {_start_weights(extras, train_cfg)}, "
            f"{_input_size_note(train_cfg, size)}, {train_cfg.get('epochs', '?')} epochs max, loss `{train_cfg.get('loss')}`, "
            f"sampling `{train_cfg.get('sampling')}`, EMA {'on' if train_cfg.get('ema') else 'off'}, seed {train_cfg.get('seed')}."]),
        *_training_time(folder),
        f"- Split: lesion-grouped, stratified (manifest `split_manifest.csv`, sha256 `{str(extras.get('manifest_sha256'))[:12]}…`).",
        *([] if extras.get("ensemble") else [
            (f"- Weights of epoch {val.get('epoch')}, exported from checkpoint {extras['exported_from']} "
             "(`scripts/export_checkpoint.py`, chosen on the validation split with the shipped TTA); its validation "
             if extras.get("exported_from") else f"- Best validation epoch {val.get('epoch')}: ")
            + f"balanced accuracy {_fmt(val.get('val_balanced_accuracy'))}, "
            f"accuracy {_fmt(val.get('val_accuracy'))}, macro F1 {_fmt(val.get('val_macro_f1'))} (no TTA)."]),
        f"- Calibration: temperature {_fmt(extras.get('temperature'))} fitted on the validation split "
        f"(TTA `{calib.get('tta', extras.get('tta'))}`), ECE {_fmt(calib.get('ece_before'))} -> {_fmt(calib.get('ece_after'))} on validation.",
        "",
        "## Evaluation",
        "",
        *_quality_bars(folder),
        *(_eval_sections(folder) or ["Not evaluated yet: run `python evaluate.py --model THIS_FOLDER ...`.", ""]),
        *_feature_extras_lines(extras, folder),
        "## Intended use and limitations",
        "",
        "- Intended for research and teaching: exploring what a dermoscopy classifier attends to and how sure it is.",
        "- Trained on dermoscopic images only; clinical (non-dermoscopic) photos are out of distribution "
        "(see \"Not a dermoscopic image?\" above for the check that refuses them, and its limits).",
        *(["- Trained from scratch at low resolution on ~8,000 images; accuracy is below published "
           "ImageNet-pretrained models."] if (extras.get("init_weights") or {}).get("source", "scratch") == "scratch"
          else ["- Fine-tuned at low resolution (the HAM10000 copies used are 200x150 px) on ~8,000 images on a CPU; "
                "published models trained at higher resolution on more data score higher."]),
        "- HAM10000 comes mostly from fair-skinned European/Australian patients: darker skin types are under-represented "
        "and performance on them is unknown.",
        "- Other clinics, cameras and crops lower accuracy (see the external test set above, when present).",
        "",
        "## Data licence",
        "",
        LICENCE_NOTE,
        *(["", (extras.get("init_weights") or {}).get("licence_note", "")]
          if (extras.get("init_weights") or {}).get("licence_note") else []),
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_model_card(folder))
    tmp.replace(path)
    return path
