"""Evaluation: honest metrics, calibration, explanation quality and comparisons of model folders.

- `evaluate`: `run(EvalConfig)`, the whole of `evaluate.py`;
- `metrics`: pure metric functions; `reporting`: report.md and plots;
- `explain_quality`: deletion/insertion faithfulness and localisation of saliency maps.
"""
