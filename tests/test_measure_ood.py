"""scripts/measure_ood.py, the comparison behind the OOD defaults, runs end to end on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fitted_folder import make_fitted, non_lesion_images

ROOT = Path(__file__).resolve().parents[1]


def test_measure_ood_compares_layer_candidates_with_a_simulated_camera_change(tmp_path):
    fitted = make_fitted(tmp_path, build_index=False)
    ood_root = tmp_path / "ood"
    for i, (name, image) in enumerate(non_lesion_images().items()):
        (ood_root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        image.save(ood_root / ("a" if i % 2 else "b") / f"{name.replace(' ', '_')}.png")
    out = tmp_path / "measure"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_ood.py"), "--model", str(fitted.folder),
                    "--data", str(fitted.data), "--ood-root", str(ood_root), "--out", str(out), "--workers", "0",
                    "--dims", "4", "--vote-k", "3", "--taps", "stages.2", "stages.3",
                    "--combos", "stages.2,stages.3"], check=True, capture_output=True, text=True, timeout=300)
    result = json.loads((out / "measure_ood.json").read_text())
    assert result["taps"] == {"stages.2": 32, "stages.3": 64}
    assert result["n"]["val_camera_shift"] == result["n"]["val"]
    methods = {r["method"] for r in result["detectors"]}
    assert {"mahalanobis", "mahalanobis+layers[stages.2]", "mahalanobis+layers[stages.2,stages.3]"} <= methods
    for row in result["detectors"]:
        assert 0.0 <= row["val_camera_shift_false_flags"] <= 1.0 and {"flag:a", "flag:b"} <= set(row)
    assert {r["class_balanced_vote"] for r in result["retrieval"]} == {False, True}
    assert "val_camera_shift_false_flags" in (out / "measure_ood.md").read_text()
