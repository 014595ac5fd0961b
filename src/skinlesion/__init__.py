"""Calibrated, explainable dermoscopic skin-lesion classification.

`import skinlesion` stays light (no torch, timm or grad-cam); `from skinlesion import Predictor`
imports them on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inference.predictor import Explanation, Prediction, Predictor

__all__ = ["Explanation", "Prediction", "Predictor"]

_LAZY = {"Predictor": "inference.predictor", "Prediction": "inference.predictor", "Explanation": "inference.predictor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
