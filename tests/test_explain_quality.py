"""Saliency-map quality: hand-made maps and masks give hand-computed scores; the pipeline ranks methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import lesion_mask, synthetic_lesion
from PIL import Image

from skinlesion.data import load_table
from skinlesion.evaluation import explain_quality as eq

MASK = np.zeros((4, 4), dtype=bool)
MASK[1:3, 1:3] = True  # the central 2x2 block


def test_energy_inside_hand_computed():
    heat = np.zeros((4, 4))
    heat[1, 1] = 3.0   # inside
    heat[0, 0] = 1.0   # outside
    assert eq.energy_inside(heat, MASK) == pytest.approx(0.75)
    assert eq.energy_inside(np.ones((4, 4)), MASK) == pytest.approx(4 / 16)
    assert eq.energy_inside(np.zeros((4, 4)), MASK) is None


def test_pointing_game_hit_miss_and_constant_map():
    heat = np.zeros((4, 4))
    heat[2, 1] = 1.0
    assert eq.pointing_hit(heat, MASK) is True
    heat[0, 3] = 2.0
    assert eq.pointing_hit(heat, MASK) is False
    assert eq.pointing_hit(np.full((4, 4), 0.5), MASK) is None


def test_perturbation_batch_switches_most_salient_pixels_first():
    x = torch.ones(3, 2, 2)
    base = torch.zeros(3, 2, 2)
    sal = torch.tensor([[0.9, 0.1], [0.5, 0.3]])  # order: (0,0), (1,0), (1,1), (0,1)
    deletion = eq.perturbation_batch(x, base, sal, mode="deletion", steps=4)
    assert deletion.shape == (5, 3, 2, 2)
    assert deletion[0].sum() == 12 and deletion[4].sum() == 0
    assert deletion[1, 0].tolist() == [[0, 1], [1, 1]]
    assert deletion[2, 0].tolist() == [[0, 1], [0, 1]]
    insertion = eq.perturbation_batch(x, base, sal, mode="insertion", steps=4)
    assert insertion[1, 0].tolist() == [[1, 0], [0, 0]]
    assert torch.equal(insertion[4], x)


def test_curve_auc_trapezoid():
    assert eq.curve_auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert eq.curve_auc(np.array([1.0, 1.0, 0.0])) == pytest.approx(0.75)


def test_deletion_insertion_rewards_the_map_that_points_at_the_evidence():
    # A "model" whose score is the mean brightness of the top-left quadrant: that is the evidence.
    x = torch.zeros(3, 16, 16)
    x[:, :8, :8] = 1.0

    def score(batch):
        return batch[:, :, :8, :8].mean(dim=(1, 2, 3))

    right = torch.zeros(16, 16)
    right[:8, :8] = 1.0
    right += torch.linspace(0, 0.01, 256).reshape(16, 16)  # break ties
    wrong = 1.0 - right
    good = eq.deletion_insertion(score, x, right, steps=8)
    bad = eq.deletion_insertion(score, x, wrong, steps=8)
    assert good["deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > bad["insertion_auc"]


def test_masks_are_matched_by_stem_with_any_suffix(tmp_path):
    for name in ("ISIC_0000001_segmentation.png", "IMD002_lesion.bmp", "plain.png", "ISIC_00000012.png"):
        Image.new("L", (4, 4), 255).save(tmp_path / name)
    masks = eq.index_masks(tmp_path)
    assert eq.find_mask("x/ISIC_0000001.jpg", masks).name == "ISIC_0000001_segmentation.png"
    assert eq.find_mask("IMD002.bmp", masks).name == "IMD002_lesion.bmp"
    assert eq.find_mask("y/plain.jpg", masks).name == "plain.png"
    assert eq.find_mask("ISIC_0000009.jpg", masks) is None
    with pytest.raises(eq.MaskError, match="not found"):
        eq.index_masks(tmp_path / "nope")


def test_ph2_case_folder_gives_the_lesion_mask_not_the_image_or_roi(tmp_path):
    case = tmp_path / "IMD002"
    for sub, name in (("IMD002_Dermoscopic_Image", "IMD002.bmp"), ("IMD002_lesion", "IMD002_lesion.bmp"),
                      ("IMD002_roi", "IMD002_R1_Region.bmp")):
        (case / sub).mkdir(parents=True)
        Image.new("L", (4, 4), 255).save(case / sub / name)
    masks = eq.index_masks(tmp_path)
    assert eq.find_mask(case / "IMD002_Dermoscopic_Image" / "IMD002.bmp", masks).name == "IMD002_lesion.bmp"


def test_mask_in_model_frame_follows_resize_and_crop():
    from skinlesion.data.transforms import Preprocessing, eval_geometry

    img = synthetic_lesion(3, size=(120, 90))
    mask = lesion_mask(img)
    framed = eq.mask_in_model_frame(mask, eval_geometry(Preprocessing(input_size=64)))
    assert framed.shape == (64, 64) and framed.dtype == bool
    # the share of lesion pixels survives a resize + slight centre crop (lesion is central)
    assert framed.mean() == pytest.approx(mask.mean() * (120 / 90), rel=0.25)


def test_rank_methods_orders_by_mean_rank():
    rows = [{"method": "a", "insertion_auc": 0.5, "deletion_auc": 0.4},
            {"method": "b", "insertion_auc": 0.7, "deletion_auc": 0.2},
            {"method": "c", "insertion_auc": 0.6, "deletion_auc": 0.5}]
    ranked = eq.rank_methods(rows)
    # b: ranks (1, 1) -> 1.0; a: (3, 2) -> 2.5; c: (2, 3) -> 2.5, ties kept in input order
    assert [r["method"] for r in ranked] == ["b", "a", "c"]
    assert [r["mean_rank"] for r in ranked] == [1.0, 2.5, 2.5]
    assert ranked[0]["method"] == "b" and ranked[0]["rank"] == 1 and ranked[0]["mean_rank"] == 1.0


def _synthetic_folder(root, n_per_class=2, masks_dir=None):
    for c, label in enumerate(("bkl", "mel", "nv")):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            img = synthetic_lesion(10 * c + i, size=(96, 72), label=c)
            img.save(root / label / f"img_{label}_{i}.png")
            if masks_dir is not None:  # masks at twice the image size, as for a downscaled copy of a set
                mask = Image.fromarray(lesion_mask(img).astype(np.uint8) * 255).resize((192, 144), Image.NEAREST)
                mask.save(masks_dir / f"img_{label}_{i}_lesion.png")


def test_pipeline_on_tiny_model_scores_and_ranks_methods(tmp_path, tiny_model_folder):
    from skinlesion.inference.predictor import Predictor

    masks = tmp_path / "masks"
    masks.mkdir()
    _synthetic_folder(tmp_path / "data", masks_dir=masks)
    table = load_table(tmp_path / "data")
    predictor = Predictor.from_pretrained(tiny_model_folder, device="cpu", use_onnx=False)
    cfg = eq.QualityConfig(methods=("gradcam", "eigencam"), n_images=2, masks=str(masks), steps=4)
    result = eq.evaluate_explanations(predictor, table, cfg, temperature=1.0)
    assert result["n_images"] == 2
    assert sorted(r["rank"] for r in result["methods"]) == [1, 2]
    assert len(result["per_image"]) == 4
    assert result["masks_resized_to_image"] == 2
    for row in result["methods"]:
        assert 0.0 <= row["deletion_auc"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0
        assert row["energy_inside_mask"] is None or 0.0 <= row["energy_inside_mask"] <= 1.0
        assert "pointing_accuracy" in row
