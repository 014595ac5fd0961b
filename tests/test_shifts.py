"""skinlesion.evaluation.shifts: validation-side acquisition shifts change how an image was taken, not what it shows."""

from __future__ import annotations

import numpy as np
from PIL import Image

from skinlesion.evaluation.shifts import SHIFTS, aperture_shift, camera_shift, colour_shift


def test_validation_shifts_change_acquisition_not_content(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "lesion.png"
    Image.fromarray(rng.integers(60, 200, size=(150, 200, 3), dtype=np.uint8)).save(path)
    original = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)

    colour = np.asarray(colour_shift(str(path), 3), dtype=np.float32)
    assert colour.shape == original.shape
    assert np.array_equal(colour, np.asarray(colour_shift(str(path), 3)))  # seeded: rerunnable
    assert not np.array_equal(colour, np.asarray(colour_shift(str(path), 4)))
    # a global tone change: the per-pixel order within a channel is (almost) kept
    assert np.corrcoef(colour[..., 0].ravel(), original[..., 0].ravel())[0, 1] > 0.95

    aperture = np.asarray(aperture_shift(str(path), 3))
    assert aperture.shape == original.shape
    assert (aperture[0, 0] == 0).all() and (aperture[-1, -1] == 0).all()  # corners outside the circle
    assert np.array_equal(aperture[75, 100], original[75, 100].astype(np.uint8))  # the centre untouched


def test_camera_shift_squashes_to_a_square_and_every_shift_is_registered(tmp_path):
    path = tmp_path / "lesion.png"
    Image.fromarray(np.full((150, 200, 3), 128, dtype=np.uint8)).save(path)
    assert camera_shift(str(path)).size == (256, 256)
    assert set(SHIFTS) == {"camera_shift", "colour_shift", "aperture_shift"}
    for shift in SHIFTS.values():
        assert shift(str(path), 1).mode == "RGB"
