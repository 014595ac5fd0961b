"""The model folder training writes: a lossless round trip, timm-loadable, with everything the app needs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from synthetic_training import TINY_CNN, make_imagefolder, tiny_config

from skinlesion.data.splits import manifest_hash
from skinlesion.models.folder import load_model_folder
from skinlesion.training import loop as training


def train_capturing_model(cfg, monkeypatch) -> tuple[dict, torch.nn.Module]:
    """Run train(cfg) and keep a copy of the last model it saved into the folder (the in-memory model)."""
    saved: list[torch.nn.Module] = []
    original = training.save_model_folder

    def spy(folder, model, **kwargs):
        saved.append(copy.deepcopy(model).eval())
        return original(folder, model, **kwargs)

    monkeypatch.setattr(training, "save_model_folder", spy)
    summary = training.train(cfg)
    assert saved, "train() wrote no model folder"
    return summary, saved[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, torch.nn.Module]:
    mp = pytest.MonkeyPatch()
    try:
        root = tmp_path_factory.mktemp("roundtrip")
        data = make_imagefolder(root / "data", per_class=12)
        cfg = tiny_config(data, root / "out", epochs=2, ema=True, ema_decay=0.9)
        summary, model = train_capturing_model(cfg, mp)
    finally:
        mp.undo()
    return root / "out", summary, model


def test_model_folder_reloads_identically(trained):
    out, _, in_memory = trained
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded = load_model_folder(out)
    via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    for name, value in in_memory.state_dict().items():  # the stored weights are bit-exact ...
        assert torch.equal(loaded.model.state_dict()[name], value), name
        assert torch.equal(via_timm.state_dict()[name], value), name
    with torch.no_grad():  # ... outputs may differ in the last bit: oneDNN picks kernels by memory alignment
        expected = in_memory(x)
        torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(via_timm(x), expected, rtol=0, atol=1e-6)
    assert loaded.label_names == ["bkl", "mel", "nv"]
    assert loaded.preprocessing.input_size == 32


def test_config_json_has_everything_the_app_needs(trained):
    out, summary, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "lesion_cnn"
    assert config["num_classes"] == 3 and config["label_names"] == ["bkl", "mel", "nv"]
    assert config["model_args"] == TINY_CNN
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32]
    assert len(pre["mean"]) == 3 and len(pre["std"]) == 3
    assert pre["crop_pct"] == pytest.approx(0.95) and pre["interpolation"] == "bicubic"
    ours = config["skinlesion"]
    assert ours["tta"] == "flips"
    assert ours["temperature"] == pytest.approx(summary["temperature"]) and ours["temperature"] > 0
    assert ours["train_config"]["model"] == "lesion_cnn" and ours["train_config"]["epochs"] == 2
    assert ours["manifest_sha256"] == manifest_hash(out / "split_manifest.csv")
    assert ours["val_metrics"]["epoch"] == summary["best"]["epoch"]
    assert 0.0 <= ours["val_metrics"]["val_balanced_accuracy"] <= 1.0
    assert ours["ood"]["score"] == "energy" and isinstance(ours["ood"]["threshold"], float)
    n_val = (out / "split_manifest.csv").read_text().count(",val")
    assert ours["calibration"]["fitted_on"] == "val" and ours["calibration"]["n"] == n_val > 0
    assert (out / "README.md").is_file() and (out / "history.png").is_file()


def test_history_has_one_row_per_epoch(trained):
    out, summary, _ = trained
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert summary["epochs_run"] == 2


def test_four_unknown_folder_names_train_and_keep_their_names(tmp_path, monkeypatch):
    classes = ("atypical_nevus", "blue_spot", "mel", "zz_other")
    data = make_imagefolder(tmp_path / "data", classes=classes, per_class=8)
    summary, in_memory = train_capturing_model(tiny_config(data, tmp_path / "out", epochs=1), monkeypatch)
    loaded = load_model_folder(tmp_path / "out")
    assert loaded.label_names == list(classes) and loaded.num_classes == 4
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["label_descriptions"]["blue_spot"] == "Blue spot"  # shown as itself, not as a HAM10000 class
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), in_memory(x), rtol=0, atol=1e-6)  # last-bit kernel differences only
    assert loaded.model(x).shape == (2, 4)
    assert set(summary["best"]) >= {f"val_recall_{c}" for c in classes}


def test_set_preprocessing_changes_the_input_size_and_voids_the_old_calibration(tiny_model_folder):
    import dataclasses

    from skinlesion.inference.predictor import Predictor
    from skinlesion.models.folder import set_preprocessing, update_extras

    update_extras(tiny_model_folder, temperature=1.7, ood={"score": "energy", "threshold": -3.0},
                  calibration={"fitted_on": "val"})
    before = load_model_folder(tiny_model_folder)
    set_preprocessing(tiny_model_folder, dataclasses.replace(before.preprocessing, input_size=80))
    after = load_model_folder(tiny_model_folder)
    assert after.preprocessing.input_size == 80 and after.preprocessing.crop_pct == before.preprocessing.crop_pct
    assert after.temperature == 1.0  # fitted at 64 px: meaningless at 80 until refitted
    assert "ood" not in after.extras and "calibration" not in after.extras
    assert torch.equal(next(iter(after.model.state_dict().values())), next(iter(before.model.state_dict().values())))
    tensor, _ = Predictor(after).preprocess(Image.new("RGB", (200, 150), (180, 120, 100)))
    assert tuple(tensor.shape[-2:]) == (80, 80)


def test_color_constancy_travels_from_the_training_config_to_the_predictor(tiny_model_folder):
    import dataclasses

    from skinlesion.data.transforms import ShadesOfGray, eval_geometry
    from skinlesion.inference.predictor import Predictor
    from skinlesion.models.folder import set_preprocessing

    cfg = tiny_config(Path("data"), Path("out"), color_constancy="shades_of_gray")
    assert training.preprocessing_of(cfg).color_constancy == "shades_of_gray"
    plain = load_model_folder(tiny_model_folder)
    set_preprocessing(tiny_model_folder, dataclasses.replace(plain.preprocessing, color_constancy="shades_of_gray"))
    corrected = Predictor.from_pretrained(tiny_model_folder)
    stored = json.loads((tiny_model_folder / "config.json").read_text())
    assert stored["skinlesion"]["color_constancy"] == "shades_of_gray"
    assert "color_constancy" not in stored["pretrained_cfg"]  # timm's PretrainedCfg rejects unknown keys
    timm.create_model(f"local-dir:{tiny_model_folder}", pretrained=True)  # so plain timm still loads it
    img = Image.new("RGB", (120, 90), (200, 140, 90))  # strong warm cast
    x, shown = corrected.preprocess(img)
    crop = eval_geometry(corrected.preprocessing)(img)
    assert np.array_equal(np.asarray(shown), crop.permute(1, 2, 0).numpy())  # the user sees the photo's own colours
    expected = ShadesOfGray()(crop).float() / 255
    mean = torch.tensor(corrected.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(corrected.preprocessing.std).view(3, 1, 1)
    torch.testing.assert_close(x, (expected - mean) / std)  # the model sees the corrected ones


def test_fov_crop_travels_from_the_training_config_to_the_predictor_and_its_cam(tiny_model_folder):
    import dataclasses

    from skinlesion.inference.predictor import Predictor
    from skinlesion.models.folder import set_preprocessing

    assert training.preprocessing_of(tiny_config(Path("data"), Path("out"), fov_crop=True)).fov_crop is True
    plain = load_model_folder(tiny_model_folder)
    assert plain.preprocessing.fov_crop is False
    set_preprocessing(tiny_model_folder, dataclasses.replace(plain.preprocessing, fov_crop=True))
    stored = json.loads((tiny_model_folder / "config.json").read_text())
    assert stored["skinlesion"]["fov_crop"] is True and "fov_crop" not in stored["pretrained_cfg"]
    timm.create_model(f"local-dir:{tiny_model_folder}", pretrained=True)  # plain timm still loads it
    cropping = Predictor.from_pretrained(tiny_model_folder)
    assert cropping.preprocessing.fov_crop is True
    a = np.full((150, 200, 3), (190, 140, 120), np.uint8)
    yy, xx = np.mgrid[:150, :200]
    a[(xx - 100) ** 2 + (yy - 75) ** 2 > 65 ** 2] = 0  # an uncropped dermatoscope's black surround
    img = Image.fromarray(a)
    _, shown = cropping.preprocess(img)
    assert (np.asarray(shown).max(axis=2) < 16).mean() <= 0.01  # what the model sees has no black corners
    # The overlay tints exactly the pixels the model saw. (75, 40) lies inside the circle but outside the square
    # cropped from it, while the plain centre crop (x ~28-172) would include it: untinted only if the CAM is
    # mapped back through the field-of-view crop.
    overlay = np.asarray(cropping.explain(img, method="gradcam").overlay)
    assert np.array_equal(overlay[75, 40], a[75, 40]) and np.array_equal(overlay[:5, :5], a[:5, :5])
    assert not np.array_equal(overlay[75, 100], a[75, 100])  # the centre, which the model saw, is tinted
    plain = np.asarray(Predictor(dataclasses.replace(cropping.loaded, preprocessing=dataclasses.replace(
        cropping.preprocessing, fov_crop=False))).explain(img, method="gradcam").overlay)
    assert not np.array_equal(plain[75, 40], a[75, 40])  # without the crop the model saw (and tints) it
