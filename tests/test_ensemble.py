"""`skinlesion ensemble`: trained folders combined into one `feature_ensemble` folder that works everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import synthetic_lesion

import skinlesion.models  # noqa: F401  (registers feature_ensemble with timm)
from skinlesion.cli.main import main as cli_main
from skinlesion.data.transforms import Preprocessing
from skinlesion.inference.features import probe_feature_widths
from skinlesion.inference.predictor import Predictor
from skinlesion.models import create_model
from skinlesion.models.card import render_model_card
from skinlesion.models.ensemble import EnsembleError, write_ensemble
from skinlesion.models.folder import load_model_folder, save_model_folder

LABELS = ["bkl", "mel", "nv"]
MANIFEST = "image_id,split\nISIC_0000000,train\nISIC_0000001,val\nISIC_0000002,test\n"


def member(folder: Path, seed: int, *, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
           temperature: float = 1.0, widths=(8, 16, 16, 32), labels=LABELS, manifest: str = MANIFEST,
           architecture: str = "lesion_cnn") -> Path:
    torch.manual_seed(seed)
    args = {"widths": list(widths), "hidden": 16} if architecture == "lesion_cnn" else {}
    model = create_model(architecture, len(labels), **{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in args.items()}).eval()
    save_model_folder(folder, model, architecture=architecture, label_names=list(labels),
                      preprocessing=Preprocessing(input_size=64, mean=mean, std=std, fov_crop=True),
                      model_args=args, extras={"temperature": temperature, "tta": "flips",
                                               "train_config": {"model": architecture, "image_size": 64, "epochs": 3,
                                                                "loss": "ce", "sampling": "balanced", "seed": seed},
                                               "val_metrics": {"val_balanced_accuracy": 0.5 + seed / 10}})
    (folder / "split_manifest.csv").write_text(manifest)
    return folder


def normalise(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    # Different normalisations and temperatures: the ensemble must re-apply each member's own.
    return [member(tmp_path / "a", 0, temperature=0.7),
            member(tmp_path / "b", 1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), temperature=1.3, widths=(8, 8, 16, 16))]


def test_logits_are_the_weighted_sum_of_the_members_calibrated_logits(members, tmp_path):
    out = tmp_path / "ens"
    summary = write_ensemble(members, out, [3.0, 1.0])
    assert [m["weight"] for m in summary["members"]] == [0.75, 0.25]
    ens, a, b = (load_model_folder(p) for p in (out, *members))
    assert ens.architecture == "feature_ensemble" and ens.label_names == LABELS
    assert ens.preprocessing == a.preprocessing  # the first member's, field-of-view crop included
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        z = ens.model(normalise(x, ens.preprocessing))
        za = a.model(normalise(x, a.preprocessing)) / 0.7
        zb = b.model(normalise(x, b.preprocessing)) / 1.3
    torch.testing.assert_close(z, 0.75 * za + 0.25 * zb, atol=1e-5, rtol=1e-5)
    # Its softmax is the members' weighted geometric mean, renormalised.
    geo = torch.softmax(za, -1) ** 0.75 * torch.softmax(zb, -1) ** 0.25
    torch.testing.assert_close(torch.softmax(z, -1), geo / geo.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    # Plain timm rebuilds it from the folder alone (model_args carry the members).
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(normalise(x, ens.preprocessing)), z)
    assert (out / "split_manifest.csv").read_text() == MANIFEST


def test_the_folder_predicts_explains_and_has_features(members, tmp_path):
    out = tmp_path / "ens"
    write_ensemble(members, out)
    predictor = Predictor.from_pretrained(out, use_onnx=False)
    widths = probe_feature_widths(predictor.loaded.model, 64)
    assert widths == [16 + 16]  # both members' pooled hidden layers, side by side
    image = synthetic_lesion(3, (96, 72))
    explanation = predictor.explain(image)
    assert explanation.heatmap.shape == (72, 96)
    inside = explanation.heatmap[explanation.heatmap > 0]
    assert inside.size and float(inside.max() - inside.min()) > 0.1  # not a constant or empty map
    assert explanation.prediction.label in LABELS
    np.testing.assert_allclose(sum(explanation.prediction.probs.values()), 1.0, atol=1e-5)


def test_the_card_lists_every_member(members, tmp_path):
    out = tmp_path / "ens"
    write_ensemble(members, out)
    card = render_model_card(out)
    assert "An ensemble of 2 fine-tuned networks" in card
    assert "Member 0: `lesion_cnn`" in card and "Member 1: `lesion_cnn`" in card
    assert "temperature 0.700" in card and "temperature 1.300" in card


def test_the_ensemble_names_the_sources_its_members_were_trained_on(members, tmp_path):
    sources = [{"name": "ham10000", "path": "data/HAM10000", "layout": "ham10000", "counts": {"train": 3}},
               {"name": "isic2017", "path": "data/ISIC2017_train", "layout": "isic_challenge", "counts": {"train": 2}}]
    for folder in members:
        config = json.loads((folder / "config.json").read_text())
        config["skinlesion"]["sources"] = sources
        (folder / "config.json").write_text(json.dumps(config))
    write_ensemble(members, tmp_path / "ens")
    assert load_model_folder(tmp_path / "ens").extras["sources"] == sources


def test_members_trained_on_other_splits_are_refused(members, tmp_path):
    other = member(tmp_path / "c", 2, manifest=MANIFEST.replace("ISIC_0000001,val", "ISIC_0000001,train"))
    with pytest.raises(EnsembleError, match="split manifest .* has seen this ensemble's validation or test images"):
        write_ensemble([members[0], other], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_a_member_trained_on_more_sources_gives_the_ensemble_its_manifest(members, tmp_path):
    """An older member trained on HAM10000 alone beside one trained on HAM10000 + another clinic: allowed when no
    image the older one lists changes split; a training image the wider manifest excludes (a near-duplicate of a
    validation/test image) is counted, since the older member did train on it."""
    wider = (MANIFEST.replace("ISIC_0000000,train", "ISIC_0000000,excluded")
             + "ISIC_9000000,train\nISIC_9000001,val\n")
    multi = member(tmp_path / "multi", 2, manifest=wider)
    summary = write_ensemble([members[0], multi], tmp_path / "ens")
    assert (tmp_path / "ens" / "split_manifest.csv").read_text() == wider
    records = load_model_folder(tmp_path / "ens").extras["ensemble"]["members"]
    assert records[0]["trained_on_excluded"] == 1 and "trained_on_excluded" not in records[1]
    assert any("trained on 1 image(s)" in note for note in summary["notes"])
    # A wider manifest that moves an image the other member lists to another split is still refused.
    moved = member(tmp_path / "moved", 3, manifest=wider.replace("ISIC_0000002,test", "ISIC_0000002,train"))
    with pytest.raises(EnsembleError, match=r"ISIC_0000002: test -> train"):
        write_ensemble([members[0], moved], tmp_path / "ens2")


def test_an_ensemble_can_be_a_member_and_keeps_its_own_weighting(members, tmp_path):
    inner = tmp_path / "inner"
    write_ensemble(members, inner, [3.0, 1.0])
    third = member(tmp_path / "c", 2, temperature=0.9)
    out = tmp_path / "outer"
    write_ensemble([inner, third], out)
    outer, a, b, c = (load_model_folder(p) for p in (out, *members, third))
    assert len(outer.model.backbones) == 3
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z = outer.model(normalise(x, outer.preprocessing))
        za = a.model(normalise(x, a.preprocessing)) / 0.7
        zb = b.model(normalise(x, b.preprocessing)) / 1.3
        zc = c.model(normalise(x, c.preprocessing)) / 0.9
    torch.testing.assert_close(z, 0.5 * (0.75 * za + 0.25 * zb) + 0.5 * zc, atol=1e-5, rtol=1e-5)
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(normalise(x, outer.preprocessing)), z)


def test_other_labels_are_refused(members, tmp_path):
    other = member(tmp_path / "c", 2, labels=["mel", "bkl", "nv"])
    with pytest.raises(EnsembleError, match="must predict the same classes in the same order"):
        write_ensemble([members[0], other], tmp_path / "ens")


def test_feature_maps_of_different_strides_are_refused(members, tmp_path):
    other = member(tmp_path / "c", 2, architecture="resnet18")  # reduces by 32, lesion_cnn by 16
    with pytest.raises(ValueError, match="reduce their input by different factors"):
        write_ensemble([members[0], other], tmp_path / "ens")


def test_the_command_writes_a_folder_or_names_the_problem(members, tmp_path, capsys):
    assert cli_main(["ensemble", "--member", str(members[0]), "--member", str(members[1]),
                     "--out", str(tmp_path / "ens")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[:printed.rindex("}") + 1])["weights_mb"] >= 0
    config = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert config["skinlesion"]["ensemble"]["command"].startswith("skinlesion ensemble --member")
    assert cli_main(["ensemble", "--member", str(members[0]), "--out", str(tmp_path / "one")]) == 2
    assert "at least two model folders" in capsys.readouterr().err
    assert cli_main(["ensemble", "--member", str(members[0]), "--member", str(members[1]),
                     "--out", str(members[0])]) == 2
    assert "is one of the members" in capsys.readouterr().err


def test_the_training_record_names_each_members_command(members, tmp_path):
    (members[0] / "train_summary.json").write_text(json.dumps(
        {"command": "python train.py --config a.yaml", "train_minutes": 10.0, "epochs_run": 3, "machine": "m"}))
    out = tmp_path / "ens"
    write_ensemble(members, out, command="skinlesion ensemble --member a --member b --out ens")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["member_commands"][0] == "python train.py --config a.yaml"
    assert summary["member_commands"][1].startswith("not recorded in")
    assert summary["train_minutes"] is None  # one member's cost is unknown: no made-up total
    card = render_model_card(out)
    assert "- Member 0 was trained with: `python train.py --config a.yaml`" in card
    assert "- Command: `skinlesion ensemble --member a --member b --out ens`" in card
    assert "Training time: not recorded for every member (3 + ? epochs)" in card


def test_onnx_and_eager_agree_on_an_ensemble_folder(members, tmp_path):
    pytest.importorskip("onnxruntime")
    from skinlesion.inference.onnx_export import export_onnx

    out = tmp_path / "ens"
    write_ensemble(members, out)
    export_onnx(out)
    images = [synthetic_lesion(i, (96, 72), label=i % 3) for i in range(3)]
    eager = Predictor.from_pretrained(out, use_onnx=False).predict(images)
    onnx = Predictor.from_pretrained(out, use_onnx=True)
    assert onnx.backend == "onnxruntime"
    for a, b in zip(eager, onnx.predict(images), strict=True):
        assert a.label == b.label
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-4)


def test_a_member_served_differently_is_named_in_the_notes(members, tmp_path):
    from skinlesion.models.folder import set_preprocessing

    same = write_ensemble(members, tmp_path / "same")
    assert same["notes"] == []
    set_preprocessing(members[1], Preprocessing(input_size=80, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fov_crop=True))
    notes = write_ensemble(members, tmp_path / "ens")["notes"]
    assert len(notes) == 1 and "input_size = 80" in notes[0] and "input_size = 64" in notes[0]
    assert load_model_folder(tmp_path / "ens").preprocessing.input_size == 64


def test_training_a_feature_ensemble_from_scratch_is_refused_with_the_way_to_build_one():
    from skinlesion.training.config import TrainConfig

    with pytest.raises(ValueError, match="skinlesion ensemble --member A --member B --out C"):
        TrainConfig(data="x", model="feature_ensemble")
    assert TrainConfig(data="x", model="feature_ensemble", init_from="runs/ens").init_from == "runs/ens"
