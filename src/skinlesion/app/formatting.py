"""A `Prediction` / `Explanation` as the page shows it: `gr.Label` data, markdown, display-sized images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from ..taxonomy import describe_label

if TYPE_CHECKING:
    from ..inference.predictor import Prediction

TOP_K = 3                        # classes shown in the gr.Label
DISPLAY_MAX_SIDE = 1024          # overlays/heatmaps are shown (and returned by the API) at most this big
OOD_REFUSAL = ("This does not look like a dermoscopic image of a skin lesion; "
               "the classes below are not meaningful")

# The layered check reads an uncropped dermatoscope's black circular surround as evidence against a lesion
# (README "Not a dermoscopic image?"). Folders with `fov_crop` crop a surround they recognise (black in at least
# two corners) themselves; for the rest, and for folders without it, cropping inside the circle is the workaround.
APERTURE_HINT = ("If it is one, with a black circle or black corners around the field of view, crop to the "
                 "inside of the circle and try again.")
# Below this short side a refusal may be about the size, not the content: the shipped check flags 5% of real
# validation lesions sent at 100 x 75 pixels and 44% at 66 x 50, against 1% at the training copy's 200 x 150
# (README "Is the melanoma ceiling the resolution of our copy?", `scripts/shift_robustness.py --downscale`).
LOW_RESOLUTION_SIDE = 112


DISCLAIMER = (
    "**Research demo, not a diagnosis.** This model was trained on public dermoscopy images and can be "
    "confidently wrong. It must never be used to diagnose, treat or triage anyone: if a skin lesion "
    "worries you, see a doctor or dermatologist."
)


def label_key(code: str) -> str:
    name = describe_label(code).name
    return f"{name} ({code})" if name.lower() != code.lower() else code


def label_data(prediction: Prediction) -> dict[str, float]:
    """Every class's calibrated probability, keyed by 'Full name (code)' (gr.Label shows the top TOP_K)."""
    return {label_key(code): float(p) for code, p in prediction.probs.items()}


def pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def summary_markdown(prediction: Prediction, *, model_name: str, target_label: str, method: str) -> str:
    cls = describe_label(prediction.label)
    lines = [f"**Not a result.** {OOD_REFUSAL}: the model ranks its classes for any picture, lesion or not.\n"
             ] if prediction.out_of_distribution else []
    lines += [f"### {cls.name} (`{prediction.label}`) — {pct(prediction.confidence)}",
             f"Calibrated confidence of the predicted class: **{pct(prediction.confidence)}**  "]
    if prediction.malignant_prob is not None:
        malignant = " + ".join(describe_label(c).name.lower() for c in prediction.probs if describe_label(c).malignant)
        lines.append(f"Probability of malignancy ({malignant}): **{pct(prediction.malignant_prob)}**  ")
    else:
        lines.append("Probability of malignancy: this model has no malignant class.  ")
    if cls.description:
        lines.append(f"\n*{cls.name}:* {cls.description}")
    lines.append(f"\nModel `{model_name}`, TTA `{prediction.tta}`; the map explains "
                 f"**{label_key(target_label)}** ({method}).")
    return "\n".join(lines)


def warnings_markdown(prediction: Prediction, image_size: tuple[int, int] | None = None) -> str:
    """Empty when nothing is wrong; otherwise one line per warning. `image_size`: the upload's (width, height)."""
    warnings = []
    if prediction.out_of_distribution:
        below = "" if prediction.ood_threshold is None else \
            f", below the threshold {prediction.ood_threshold:.2f} fitted on validation images"
        small = ""
        if image_size is not None and min(image_size) < LOW_RESOLUTION_SIDE:
            small = (f" The image is only {image_size[0]}x{image_size[1]} pixels: at this size the check also refuses "
                     "many real lesions, so if it is one, upload the original photo rather than a thumbnail.")
        warnings.append(f"### ⚠ {OOD_REFUSAL}.\n"
                        "It does not look like the dermoscopic images the model was trained on "
                        f"({prediction.ood_method or 'OOD'} score {prediction.ood_score:.2f}{below}). Upload a "
                        "dermoscopic photo of the lesion: a close-up taken through a dermatoscope. "
                        f"{APERTURE_HINT}{small}")
    elif prediction.uncertain:  # under a refusal the ranking is not meaningful anyway
        warnings.append(f"⚠ **Uncertain prediction**: confidence {pct(prediction.confidence)}, "
                        f"{pct(prediction.agreement)} of the TTA views agree. Treat the ranking as a guess.")
    return "\n\n".join(warnings)


def agreement_markdown(prediction: Prediction) -> str:
    from ..inference.tta import get_views

    views = get_views(prediction.tta)
    agree = sum(label == prediction.label for label in prediction.view_labels)
    rows = [f"**TTA agreement: {agree}/{len(views)} views** ({pct(prediction.agreement)}) predict "
            f"`{prediction.label}`.", "", "| view | its own top class |", "|---|---|"]
    rows += [f"| {view.name} | {'✓' if label == prediction.label else '✗'} {label_key(label)} |"
             for view, label in zip(views, prediction.view_labels, strict=True)]
    return "\n".join(rows)


def class_notes_markdown(label_names: Sequence[str]) -> str:
    """Plain-language note on every class the model knows."""
    lines = ["**What the classes mean**", ""]
    for code in label_names:
        cls = describe_label(code)
        kind = "malignant" if cls.malignant else "benign"
        desc = f" {cls.description}" if cls.description else ""
        lines.append(f"- **{cls.name}** (`{code}`, {kind}).{desc}")
    return "\n".join(lines)


def heatmap_image(heatmap) -> Image.Image:
    from ..inference.overlay import colorize

    return Image.fromarray(colorize(heatmap))


def display_size(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most `max_side`: cheap to encode and send."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)
