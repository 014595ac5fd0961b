"""The Gradio app's logic as plain functions, testable without a server or a browser.

`app.py` holds only the layout and the event wiring; its callbacks call these names. The pieces:
- `registry`: which models to serve (`--model`, `MODEL_ID`, the shipped `weights/`) and each loaded once;
- `inputs`: uploads and choices checked, and every problem a user can fix raised as `UserError`;
- `formatting`: a prediction and its explanation as `gr.Label` data, markdown and display-sized images;
- `callbacks`: `analyze`, `compare`, `model_changed`;
- `extras`: the not-a-dermoscopic-image refusal and the similar-cases panel, and where case pictures come from;
- `examples`: the clickable examples and Hub image datasets.
Importing it imports gradio (`pip install skinlesion[app]`).
"""

from ..constants import MODEL_ID_ENV
from .callbacks import MAX_COMPARE_MODELS, Analysis, ModelView, analyze, compare, model_changed
from .examples import EXAMPLES_DATASET_ENV, example_images, example_labels, examples_from_hub
from .extras import (
    CASE_THUMBNAIL_SIDE,
    CASES_DATASET_ENV,
    CaseImages,
    ExtrasView,
    case_images_from,
    extras_intro,
    extras_view,
    pictures_for,
    selected_case,
)
from .formatting import (
    DISCLAIMER,
    OOD_REFUSAL,
    TOP_K,
    agreement_markdown,
    display_size,
    label_data,
    label_key,
    summary_markdown,
    warnings_markdown,
)
from .inputs import (
    MODEL_DEFAULT_TTA,
    PREDICTED,
    UserError,
    cam_method_choices,
    decode_upload,
    target_choices,
    tta_choices,
)
from .registry import (
    ModelRegistry,
    ModelSpec,
    ModelUnavailableError,
    load_predictor,
    model_sources,
    parse_model_spec,
)

__all__ = [
    "CASES_DATASET_ENV", "CASE_THUMBNAIL_SIDE", "DISCLAIMER", "EXAMPLES_DATASET_ENV", "MAX_COMPARE_MODELS",
    "MODEL_DEFAULT_TTA", "MODEL_ID_ENV", "OOD_REFUSAL", "PREDICTED", "TOP_K", "Analysis", "CaseImages",
    "ExtrasView", "ModelRegistry", "ModelSpec", "ModelUnavailableError", "ModelView", "UserError",
    "agreement_markdown", "analyze", "cam_method_choices", "case_images_from", "compare", "decode_upload",
    "display_size", "example_images", "example_labels", "examples_from_hub", "extras_intro", "extras_view", "pictures_for",
    "label_data", "label_key", "load_predictor", "model_changed", "model_sources", "parse_model_spec",
    "selected_case", "summary_markdown", "target_choices", "tta_choices", "warnings_markdown",
]
