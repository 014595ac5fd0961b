"""What the app's callbacks do: `analyze` (one image, one model), `compare` (several models' CAMs) and
`model_changed`, as plain functions over a `ModelRegistry`, testable without a server or a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from .formatting import (
    agreement_markdown,
    class_notes_markdown,
    display_size,
    heatmap_image,
    label_data,
    label_key,
    pct,
    summary_markdown,
    warnings_markdown,
)
from .inputs import (
    MODEL_DEFAULT_TTA,
    PREDICTED,
    UserError,
    check_alpha,
    check_method,
    check_target,
    check_tta,
    decode_upload,
    explain_errors,
    get_model,
    target_choices,
)
from .memory import on_inference_thread
from .registry import ModelRegistry

if TYPE_CHECKING:
    from ..inference.predictor import Explanation, Prediction

MAX_COMPARE_MODELS = 4           # one comparison request runs at most this many CAMs (CPU budget)


@dataclass
class Analysis:
    """Everything the result panel shows for one image and one model."""

    model_name: str
    explanation: Explanation
    label: dict[str, float]     # gr.Label value
    overlay: Image.Image        # display-sized
    heatmap: Image.Image        # colourised, display-sized
    model_input: Image.Image
    summary: str
    warnings: str
    agreement: str
    details: dict[str, Any]     # JSON: prediction.to_dict() + what was explained

    @property
    def prediction(self) -> Prediction:
        return self.explanation.prediction


def analyze(registry: ModelRegistry, image: Any, model_name: str | None = None, method: str = "gradcam",
            target: str | None = PREDICTED, tta: str | None = MODEL_DEFAULT_TTA, alpha: float = 0.5) -> Analysis:
    """One upload -> prediction + CAM with one model. Every user-fixable problem raises gr.Error."""
    method, tta_mode, alpha = check_method(method), check_tta(tta), check_alpha(alpha)
    predictor = get_model(registry, model_name)
    name = model_name or registry.default_name or ""
    target_label = check_target(target, predictor.label_names)
    rgb = decode_upload(image)
    with explain_errors():
        exp = on_inference_thread(predictor.explain, rgb, method=method, target=target_label, tta=tta_mode,
                                  alpha=alpha)
    pred = exp.prediction
    details = {"model": name, "method": exp.method, "target_label": exp.target_label, **pred.to_dict(),
               "ood_check": predictor.ood_status, "cases_status": predictor.cases_status}
    return Analysis(
        model_name=name, explanation=exp, label=label_data(pred),
        overlay=display_size(exp.overlay), heatmap=display_size(heatmap_image(exp.heatmap)),
        model_input=pred.model_input,
        summary=summary_markdown(pred, model_name=name, target_label=exp.target_label, method=exp.method),
        warnings=warnings_markdown(pred, rgb.size), agreement=agreement_markdown(pred), details=details)


def compare(registry: ModelRegistry, image: Any, model_names: Sequence[str] | None = None, method: str = "gradcam",
            target: str | None = PREDICTED, tta: str | None = MODEL_DEFAULT_TTA,
            alpha: float = 0.5) -> tuple[list[tuple[Image.Image, str]], str]:
    """The same image through several models' CAMs -> (gallery items, markdown table).

    `target` is explained by every model that has that class; the others explain their prediction.
    """
    method, tta_mode, alpha = check_method(method), check_tta(tta), check_alpha(alpha)
    names = list(model_names) if model_names else registry.available_names[:MAX_COMPARE_MODELS]
    if not names:
        raise UserError("Pick at least one model to compare." if registry.available_names
                       else "No model is available in this app.")
    if len(names) > MAX_COMPARE_MODELS:
        raise UserError(f"Compare at most {MAX_COMPARE_MODELS} models at once (got {len(names)}).")
    predictors = [(name, get_model(registry, name)) for name in names]
    rgb = decode_upload(image)
    gallery: list[tuple[Image.Image, str]] = [(display_size(rgb), "input")]
    rows = ["| model | prediction | confidence | P(malignant) | TTA agreement | map explains |", "|---|---|---|---|---|---|"]
    for name, predictor in predictors:
        wanted = target if target not in (None, "", PREDICTED) and target in predictor.label_names else None
        with explain_errors():
            exp = on_inference_thread(predictor.explain, rgb, method=method, target=wanted, tta=tta_mode,
                                      alpha=alpha)
        pred = exp.prediction
        gallery.append((display_size(exp.overlay), f"{name}: {pred.label} {pct(pred.confidence)} "
                                                   f"(map: {exp.target_label})"))
        malignant = "—" if pred.malignant_prob is None else pct(pred.malignant_prob)
        flags = (" ⚠ uncertain" if pred.uncertain else "") + (" ⚠ not dermoscopic?" if pred.out_of_distribution else "")
        rows.append(f"| {name} | {label_key(pred.label)}{flags} | {pct(pred.confidence)} | {malignant} | "
                    f"{pct(pred.agreement)} | {label_key(exp.target_label)} |")
    return gallery, "\n".join(rows)


@dataclass(frozen=True)
class ModelView:
    """What changes on the page when the model dropdown changes."""

    target_choices: list[tuple[str, str]]
    class_notes: str


def model_changed(registry: ModelRegistry, model_name: str | None) -> ModelView:
    """Class dropdown choices and class notes follow the selected model's labels."""
    if not model_name and registry.default_name is None:
        return ModelView(target_choices([]), "")
    predictor = get_model(registry, model_name)
    return ModelView(target_choices(predictor.label_names), class_notes_markdown(predictor.label_names))
