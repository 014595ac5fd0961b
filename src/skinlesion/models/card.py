"""The model card (README.md of a model folder), rendered from what the folder itself records.

It follows the Hub's model card conventions: YAML front matter the Hub reads (licence, library, tags, datasets,
pipeline tag and a `model-index` with results per test set and metric), then model details, intended and
out-of-scope use, training data, evaluation (per test set, calibration, per group), limitations, licence and
citation. Numbers come only from the config (validation metrics, calibration, sources) and from evaluation
reports saved beside it (`eval/*/report.json` written by evaluate.py, per-group tables from its `--by`), never
typed by hand; what each dataset is, its licence and citation come from `data/datasets_info.py`.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import yaml

from ..constants import MANIFEST_FILE, MODEL_CONFIG_FILE
from ..data.datasets_info import dataset_info, model_licence
from ..taxonomy import describe_label
from .card_eval import (
    calibration_lines,
    eval_reports,
    fmt,
    group_lines,
    limitation_lines,
    melanoma_auc,
    ood_measured_lines,
    results_lines,
    set_title,
)

# Exactly what the card (and the README) tell plain-timm users; tests run these lines.
PLAIN_TIMM_LINES = (
    "import timm",
    "import skinlesion.models  # registers densenet201_se, lesion_cnn and feature_ensemble with timm (other architectures need no import)",
    "model = timm.create_model('local-dir:PATH', pretrained=True)",
)


# ---------------------------------------------------------------------------------------------
# What the folder records: its training sources (its evaluation reports: card_eval.py)
# ---------------------------------------------------------------------------------------------

def training_sources(extras: dict, folder: Path) -> list[dict]:
    """config.json's `skinlesion.sources` (one record per source folder); a folder trained before several sources
    is HAM10000 alone, with its split sizes read from its manifest."""
    if extras.get("sources"):
        return list(extras["sources"])
    totals: Counter = Counter()
    if (folder / MANIFEST_FILE).is_file():
        with (folder / MANIFEST_FILE).open(newline="") as f:
            totals = Counter(row["split"] for row in csv.DictReader(f))
    return [{"name": "ham10000", "layout": "ham10000", "split_rule": "lesion-grouped",
             "n_images": sum(totals.values()) or None, "split_totals": dict(totals)}]


# ---------------------------------------------------------------------------------------------
# Front matter (the Hub's model card metadata)
# ---------------------------------------------------------------------------------------------

def _model_index_result(report: dict) -> dict:
    data = report.get("data", {})
    layouts = str(data.get("layout", "")).split("+")
    info = dataset_info(layouts[0]) if len(layouts) == 1 else None
    metrics = [("balanced_accuracy", report.get("balanced_accuracy"), "Balanced accuracy"),
               ("accuracy", report.get("accuracy"), "Accuracy"),
               ("roc_auc", report.get("auc_ovr_macro"), "Macro one-vs-rest AUC"),
               ("roc_auc", melanoma_auc(report), "Melanoma AUC (one-vs-rest)"),
               ("ece", report.get("ece"), "Expected calibration error (15 bins)")]
    dataset = {"name": set_title(report, plain=True), "type": info.key if info else "+".join(layouts)}
    if data.get("split") in ("test", "val"):
        dataset["split"] = data["split"]
    return {"task": {"type": "image-classification", "name": "Dermoscopic skin-lesion classification"},
            "dataset": dataset,
            "metrics": [{"type": kind, "value": round(float(value), 4), "name": name}
                        for kind, value, name in metrics if value is not None]}


def front_matter(config: dict, sources: list[dict], reports: list[tuple[str, dict]]) -> list[str]:
    infos = [dataset_info(s) for s in sources]
    licence = model_licence(sources)
    meta: dict = {"license": licence}
    if licence == "other":  # the Hub asks for a name and a link with `other`
        meta.update({"license_name": "dataset-terms", "license_link": "README.md#licence-and-citation"})
    meta.update({
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", "dermatology", "dermoscopy", "skin-lesion", "medical-imaging",
                 *dict.fromkeys(i.key for i in infos if i)],
        "datasets": list(dict.fromkeys(i.tag for i in infos if i)),
        "metrics": ["balanced_accuracy", "accuracy", "roc_auc", "ece"],
    })
    results = [_model_index_result(report) for _, report in reports]
    if results:
        meta["model-index"] = [{"name": f"skinlesion-{config['architecture']}", "results": results}]
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).rstrip(), "---"]


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
            f"{fmt(m.get('weight'), 2)}, temperature {fmt(m.get('temperature'))}, best validation balanced accuracy "
            f"{fmt(m.get('val_balanced_accuracy'))} (no TTA, its own training size); weights sha256 "
            f"`{str(m.get('weights_sha256'))[:12]}…`.")
    return lines  # the command that combined them: train_summary.json's, under "Training time"


def _input_size_note(train_cfg: dict, size: int) -> str:
    trained = train_cfg.get("image_size", size)
    if trained == size:
        return f"input {size} px"
    # scripts/choose_input_size.py: the serving size was picked on the validation split.
    return f"trained on {trained} px crops, served at {size} px (chosen on the validation split)"


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
                     f"{fmt(detector.get('threshold'), 4)} (the {fmt(100 * (detector.get('quantile') or 0), 2)}% "
                     "quantile of the validation split) is refused as not dermoscopic.")
        # measured in README "Not a dermoscopic image?" (scripts/measure_ood.py, aperture shift)
        if taps and not fov_crop:
            lines.append("- Known limitation: the block statistics also respond to an uncropped dermatoscope's black "
                         "circular field of view, so such lesion images are often refused; crop inside the circle.")
        elif taps:
            lines.append("- An uncropped dermatoscope's black circular surround is cropped away before the check "
                         "(`fov_crop`); the block statistics would otherwise read it as evidence against a lesion.")
        lines += ood_measured_lines(folder)
    else:
        lines.append(f"- No out-of-distribution statistics: the not-a-dermoscopic-image check is off (fit with {fit}).")
    if index:
        lines.append(f"- `{index.get('file')}`: similar-cases index of {index.get('n_cases')} training images "
                     f"({index.get('n_lesions')} lesions), {index.get('dims')}-d PCA of the L2-normalised features, "
                     "with image ids, diagnoses, `dx_type`, lesion ids and sources; built from split manifest "
                     f"`{str(index.get('manifest_sha256'))[:12]}…`."
                     + (f" `{index['thumbnails']['file']}`: {index['thumbnails']['side']} px WebP thumbnails of the "
                        f"indexed training images ({index['thumbnails']['bytes'] / 2**20:.1f} MB), under the "
                        "training sources' licences below." if index.get("thumbnails") else ""))
    else:
        lines.append(f"- No similar-cases index (build it with {fit}).")
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _training_data_lines(sources: list[dict]) -> list[str]:
    lines = ["## Training data", "",
             "| source | images | classes | split | licence |", "|---|---|---|---|---|"]
    for s in sources:
        info = dataset_info(s)
        classes = ", ".join(f"{k} {v}" for k, v in (s.get("classes") or {}).items()) or "the seven HAM10000 classes"
        lines.append(f"| {info.title if info else s.get('name')} (`{s.get('path', s.get('name'))}`) | "
                     f"{fmt(s.get('n_images'))} | {classes} | {s.get('split_rule', 'lesion-grouped')} | "
                     f"{info.licence if info else 'unknown: check the source'} |")
    lines.append("")
    # One line per dataset: ISIC 2017's train and val folders are two sources of one dataset.
    for info in dict.fromkeys(i for i in (dataset_info(s) for s in sources) if i):
        lines.append(f"- {info.title}: {info.origin}.")
    per_split = [(s, split, counts) for s in sources for split, counts in (s.get("per_split") or {}).items()]
    if per_split:
        lines += ["", "| source | split | images | per class |", "|---|---|---|---|"]
        lines += [f"| {s.get('name')} | {split} | {sum(counts.values())} | "
                  f"{', '.join(f'{k} {v}' for k, v in counts.items())} |" for s, split, counts in per_split]
    totals = [(s, s["split_totals"]) for s in sources if s.get("split_totals")]
    for s, t in totals:
        lines.append(f"- Split of {s.get('name')} (`split_manifest.csv`): "
                     + ", ".join(f"{k} {v}" for k, v in t.items()) + " images.")
    lines += ["- Lesion-grouped: every image of a lesion is in one split (HAM10000 has up to 6 images per lesion), "
              "so no test lesion was seen in training.", ""]
    return lines


def _licence_lines(sources: list[dict], extras: dict, reports: list[tuple[str, dict]]) -> list[str]:
    lines = ["## Licence and citation", ""]
    infos = [dataset_info(s) for s in sources]
    trained = list(dict.fromkeys(i for i in infos if i))  # one line per dataset (ISIC 2017 train + val: one)
    lines += [f"- Trained on {i.title}, {i.licence}: the weights inherit its terms (non-commercial)." for i in trained]
    lines += [f"- Trained on `{s.get('name')}`: check that dataset's own terms before use."
              for s, i in zip(sources, infos, strict=True) if not i]
    note = (extras.get("init_weights") or {}).get("licence_note")
    if note:
        lines.append(f"- {note}")
    tested = [i for i in dict.fromkeys(dataset_info(layout) for _, r in reports
                                       for layout in str(r.get("data", {}).get("layout", "")).split("+"))
              if i and i not in trained]
    lines += [f"- Tested also on {i.title} ({i.licence}); it was not trained on." for i in tested]
    lines += ["", "Cite the data the model learned from and was tested on:", ""]
    for info in [*trained, *tested]:
        lines += [f"- {info.citation}", "", "```bibtex", info.bibtex, "```", ""]
    return lines


def render_model_card(folder: str | Path) -> str:
    folder = Path(folder)
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    extras = config.get("skinlesion", {})
    train_cfg = extras.get("train_config", {})
    val = extras.get("val_metrics", {})
    labels = config["label_names"]
    size = config["pretrained_cfg"]["input_size"][-1]
    sources = training_sources(extras, folder)
    reports = eval_reports(folder)
    malignant = [c for c in labels if describe_label(c).malignant]
    lines = [
        *front_matter(config, sources, reports),
        "",
        f"# Skin-lesion classifier: `{config['architecture']}`, {len(labels)} classes, {size} px",
        "",
        "**Research demo, not a medical device.** It must not be used to diagnose, treat or triage anyone. "
        "A dermatologist examines the whole patient; this model sees one low-resolution picture.",
        "",
        "## Model details",
        "",
        f"- Input: one dermoscopic photograph (a close-up through a dermatoscope). Output: calibrated probabilities "
        f"of {len(labels)} diagnoses, the probability of malignancy (the sum over {', '.join(malignant) or 'none'}), "
        "how much the test-time-augmentation views agree"
        + (", a refusal when the image does not look like dermoscopy" if extras.get("ood_detector") else "")
        + (", and the most similar confirmed training lesions" if extras.get("case_index") else "") + ".",
        f"- Architecture `{config['architecture']}` (timm), {size} px input, TTA `{extras.get('tta', 'none')}`; "
        "made with the `skinlesion` package.",
        "",
        "| code | name | malignant |",
        "|---|---|---|",
        *[f"| {c} | {describe_label(c).name} | {'yes' if describe_label(c).malignant else 'no'} |" for c in labels],
        "",
        "## Intended use",
        "",
        "- Research and teaching: what a dermoscopy classifier attends to, how sure it is, and where it fails.",
        "- Input: dermoscopic images of a single skin lesion, like those of the training data below.",
        "",
        "## Out-of-scope use",
        "",
        "- Diagnosis, screening, triage or any decision about a patient.",
        "- Clinical or phone photographs without a dermatoscope, images of other organs, pictures of anything else.",
        "- Lesions outside its classes, and populations the training data does not cover (see Limitations).",
        "",
        "## How to use",
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
        ] if extras.get("color_constancy", "none") != "none" else []),
        *([
            "",
            "Preprocessing first crops a photo that shows a dermatoscope's black circular surround to the largest "
            "square inside its field of view (`skinlesion.fov_crop` in `config.json`; photos without one are "
            "untouched): `Predictor` does it; with plain timm apply `skinlesion.data.transforms.FovCrop` to the "
            "uint8 image first.",
        ] if extras.get("fov_crop") else []),
        "",
        *_training_data_lines(sources),
        "## Training procedure",
        "",
        *(_ensemble_lines(extras["ensemble"], size) if extras.get("ensemble") else [
            f"- Architecture `{config['architecture']}` trained from {_start_weights(extras, train_cfg)}, "
            f"{_input_size_note(train_cfg, size)}, {train_cfg.get('epochs', '?')} epochs max, loss `{train_cfg.get('loss')}`, "
            f"sampling `{train_cfg.get('sampling')}`, EMA {'on' if train_cfg.get('ema') else 'off'}, seed {train_cfg.get('seed')}."]),
        *_training_time(folder),
        f"- Split manifest `split_manifest.csv`, sha256 `{str(extras.get('manifest_sha256'))[:12]}…`.",
        *([] if extras.get("ensemble") else [
            (f"- Weights of epoch {val.get('epoch')}, exported from checkpoint {extras['exported_from']} "
             "(`scripts/export_checkpoint.py`, chosen on the validation split with the shipped TTA); its validation "
             if extras.get("exported_from") else f"- Best validation epoch {val.get('epoch')}: ")
            + f"balanced accuracy {fmt(val.get('val_balanced_accuracy'))}, "
            f"accuracy {fmt(val.get('val_accuracy'))}, macro F1 {fmt(val.get('val_macro_f1'))} (no TTA)."]),
        "",
        "## Evaluation",
        "",
        *results_lines(reports),
        *calibration_lines(extras, reports),
        *group_lines(reports),
        *_feature_extras_lines(extras, folder),
        *limitation_lines(reports, sources, extras),
        *_licence_lines(sources, extras, reports),
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_model_card(folder))
    tmp.replace(path)
    return path
