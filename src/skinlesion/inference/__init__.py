"""Inference: a model folder turned into calibrated predictions, explanations and their checks.

- `predictor`: the `Predictor` (also `from skinlesion import Predictor`), the one place logits are computed;
- `tta`: reversible test-time-augmentation views; `cam`: class-activation maps; `overlay`: maps onto images;
- `calibration`: temperature scaling and the energy score;
- `features`: penultimate-layer features from the same forward as the logits, which serve
  `ood` (is this a dermoscopic image at all?) and `cases` (the nearest confirmed training cases);
- `onnx_export`: model.onnx for onnxruntime; `onnx_runtime`: the session the Predictor runs it with;
- `predict_folder` / `explain_images`: a folder of images to a CSV, images to CAM overlays (what
  `skinlesion predict` and `skinlesion explain` run).
"""
