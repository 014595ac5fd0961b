"""What a user sends, checked, and every problem they can fix turned into a `UserError`.

`UserError` is a `gr.Error`: the page and API clients show its message, and the server log gets one
line instead of a traceback. Uploads (file, clipboard, webcam, base64), the CAM method, class, TTA mode
and opacity are checked here, and the library's errors a user can act on (an unreadable image, a model
that cannot be explained with a CAM, an unavailable model) are mapped to one.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ..imageio import ImageLoadError, load_rgb
from ..taxonomy import describe_label
from .registry import ModelRegistry, ModelUnavailableError

if TYPE_CHECKING:
    from ..inference.predictor import Predictor

logger = logging.getLogger(__name__)

PREDICTED = "predicted"          # class-to-explain choice meaning "the predicted class"
MODEL_DEFAULT_TTA = "default"    # TTA choice meaning "the model folder's own mode" (its calibration was fitted with it)
MIN_IMAGE_SIDE = 32              # smaller uploads are thumbnails or mistakes, not dermoscopic photos
# ScoreCAM runs one forward pass per activation channel: minutes per request on a CPU Space.
SLOW_CAM_METHODS = frozenset({"scorecam"})


class UserError(gr.Error):
    """A problem the user can fix (bad upload, unknown class): shown in the page, no traceback in the log."""

    def __init__(self, message: str, title: str = "Error"):
        super().__init__(message, title=title, print_exception=False)
        logger.info("user error: %s", message)


def _upload_path_and_name(image: Any) -> tuple[Any, str]:
    """gr.Image payload (preprocess=False: a dict with path/url/orig_name), path, PIL or array -> (source, name)."""
    if isinstance(image, dict):
        path, url = image.get("path"), image.get("url") or ""
        name = image.get("orig_name") or "the uploaded image"
        if path:
            return path, name
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False), name
            except (ValueError, IndexError) as err:
                raise UserError(f"Could not read the image: {name} is not valid base64 data") from err
        raise UserError("The upload carried no file. Try uploading the image again.")
    if isinstance(image, (str, os.PathLike)):
        return image, Path(image).name
    return image, "the image"


def decode_upload(image: Any) -> Image.Image:
    """Whatever the image component sends -> RGB PIL image, or a gr.Error saying what is wrong with it."""
    if image is None:
        raise UserError("Upload a dermoscopic image first (file, clipboard or webcam).", title="No image")
    source, name = _upload_path_and_name(image)
    try:
        rgb = load_rgb(source)
    except ImageLoadError as err:
        # The message starts with the server-side temp path: show the user's own file name instead.
        message = str(err).replace(str(source), name) if isinstance(source, (str, os.PathLike)) else str(err)
        raise UserError(f"Could not read the image: {message}", title="Unreadable image") from err
    w, h = rgb.size
    if min(w, h) < MIN_IMAGE_SIDE:
        raise UserError(f"The image is only {w}x{h} pixels; it needs at least {MIN_IMAGE_SIDE} pixels on each "
                       "side. Upload the dermoscopic photo itself, not a thumbnail.", title="Image too small")
    return rgb


def cam_method_choices() -> list[str]:
    from ..inference.cam import CAM_METHODS

    return [name for name in CAM_METHODS if name not in SLOW_CAM_METHODS]


def tta_choices() -> list[tuple[str, str]]:
    from ..inference.tta import TTA_MODES

    return [("model default", MODEL_DEFAULT_TTA)] + [(mode, mode) for mode in TTA_MODES]


def target_choices(label_names: Sequence[str]) -> list[tuple[str, str]]:
    """Class-to-explain dropdown: 'predicted' first, then each of the model's labels with its full name."""
    return [("predicted class", PREDICTED)] + [(f"{describe_label(c).name} ({c})", c) for c in label_names]


def check_method(method: str | None) -> str:
    method = (method or "gradcam").strip().lower()
    if method not in cam_method_choices():
        raise UserError(f"Unknown CAM method {method!r}; choose one of {cam_method_choices()}")
    return method


def check_tta(tta: str | None) -> str | None:
    from ..inference.tta import TTA_MODES

    if tta in (None, "", MODEL_DEFAULT_TTA):
        return None
    if tta not in TTA_MODES:
        raise UserError(f"Unknown TTA mode {tta!r}; choose one of {[MODEL_DEFAULT_TTA, *TTA_MODES]}")
    return tta


def check_alpha(alpha: float | None) -> float:
    alpha = 0.5 if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"Overlay opacity must be between 0 and 1, got {alpha}")
    return alpha


def check_target(target: str | None, label_names: Sequence[str]) -> str | None:
    if target in (None, "", PREDICTED):
        return None
    if target not in label_names:
        raise UserError(f"This model has no class {target!r}; its classes are {list(label_names)}")
    return target


def get_model(registry: ModelRegistry, name: str | None) -> Predictor:
    try:
        return registry.get(name)
    except ModelUnavailableError as err:
        raise UserError(str(err), title="Model unavailable") from err


@contextlib.contextmanager
def explain_errors() -> Iterator[None]:
    from ..inference.cam import UnsupportedModelError

    try:
        yield
    except ImageLoadError as err:
        raise UserError(f"Could not read the image: {err}", title="Unreadable image") from err
    except UnsupportedModelError as err:
        raise UserError(f"This model cannot be explained with a CAM: {err}") from err
