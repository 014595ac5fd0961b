"""Combine trained model folders into one `feature_ensemble` folder (`skinlesion ensemble`).

Averaging the calibrated predictions of differently built networks is the cheapest dependable gain in
accuracy and calibration under a change of camera or clinic (Lakshminarayanan et al. 2017; Ovadia et
al. 2019), and it costs no training. The result is an ordinary model folder: one set of safetensors
weights, `config.json` with `architecture: feature_ensemble` and the members in `model_args` (so timm
rebuilds it), the preprocessing of the first member, and in the `skinlesion` section a record of each
member (folder, weights sha256, where its training started, its temperature and weight).

The head is the members' linear classifiers side by side, member i's scaled by w_i / T_i, so

    logits = sum_i w_i * z_i / T_i     and     softmax(logits) ∝ prod_i softmax(z_i / T_i) ** w_i

(weights sum to 1): the geometric-mean ensemble of the calibrated members. It gets a temperature of
its own afterwards (`evaluate.py --fit-temperature`), then `skinlesion fit-features` as any folder.

Members must share the label list and the split: a member trained on another split has seen some of this
folder's validation (and test) images, and every figure measured on them would leak. Manifests may differ in
what they list (a member trained on HAM10000 alone beside members trained on HAM10000 + ISIC 2017): the
ensemble takes the manifest of the member that lists the most, and every image another member's manifest lists
must keep its split there. An image the near-duplicate screen left out of training in the larger manifest but
that an older member trained on is allowed and counted in the member's record (`trained_on_excluded`).
A member may itself be an ensemble: its backbones join this one's, its head block keeps its own weighting.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..constants import MANIFEST_FILE, MODEL_WEIGHTS_FILE
from ..data.splits import EXCLUDED, manifest_hash, read_manifest, split_changes
from .architectures import FeatureEnsemble
from .folder import (
    LoadedModel,
    ModelFolderError,
    file_sha256,
    load_model_folder,
    read_config,
    save_model_folder,
)

ARCHITECTURE = "feature_ensemble"
# Member fields kept in the ensemble's record (config.json) and shown on its card.
SUMMARY_FILE = "train_summary.json"
RECORDED_TRAIN_FIELDS = ("model", "image_size", "epochs", "loss", "sampling", "sampling_power", "seed")


class EnsembleError(ModelFolderError):
    """The folders cannot be combined (labels, split or preprocessing differ), or the weights are invalid."""


@dataclass(frozen=True)
class Member:
    folder: Path
    loaded: LoadedModel
    weight: float
    model_args: dict  # config.json's, e.g. drop_path_rate: the backbone is rebuilt with them


def _manifest_sha(folder: Path, loaded: LoadedModel) -> str:
    recorded = loaded.extras.get("manifest_sha256")
    if recorded:
        return str(recorded)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise EnsembleError(f"{folder}: no {MANIFEST_FILE} and no manifest_sha256 in config.json; an ensemble "
                            "needs to know every member was trained on the same split")
    return manifest_hash(path)


def shared_manifest(members: Sequence[Member]) -> tuple[str, Path | None, dict[Path, int]]:
    """The ensemble's split manifest: (sha256, file or None when all members share one sha, and per member the
    number of images it trained on that the chosen manifest excludes from training).

    With differing manifests, the chosen one is the member's that every other member's manifest fits into: each
    image another member lists keeps its split (train may have become `excluded`, counted). Else EnsembleError."""
    shas = [_manifest_sha(m.folder, m.loaded) for m in members]
    if len(set(shas)) == 1:
        return shas[0], None, {}
    missing = [str(m.folder) for m in members if not (m.folder / MANIFEST_FILE).is_file()]
    if missing:
        raise EnsembleError(f"the members were trained on different split manifests and {missing[0]} has no "
                            f"{MANIFEST_FILE} to compare: a member trained on another split has seen this ensemble's "
                            "validation or test images")
    frames = {m.folder: read_manifest(m.folder / MANIFEST_FILE) for m in members}
    by_size = sorted(members, key=lambda m: -len(frames[m.folder]))
    first_problem = None
    for candidate in by_size:
        chosen = frames[candidate.folder]
        problems = [(m.folder, split_changes(frames[m.folder], chosen)) for m in members if m is not candidate]
        problems = [(folder, changes) for folder, changes in problems if changes]
        if not problems:
            status = dict(zip(chosen["image_id"], chosen["split"], strict=True))
            excluded = {m.folder: int(sum(split == "train" and status.get(i) == EXCLUDED for i, split in
                                          zip(frames[m.folder]["image_id"], frames[m.folder]["split"], strict=True)))
                        for m in members}
            return shas[members.index(candidate)], candidate.folder / MANIFEST_FILE, excluded
        first_problem = first_problem or (candidate.folder, *problems[0])
    larger, folder, changes = first_problem
    raise EnsembleError(
        f"{folder} was trained on a split manifest that {larger}'s contradicts ({len(changes)} image(s), first: "
        f"{changes[0]}): a member trained on another split has seen this ensemble's validation or test images")


def check_members(members: Sequence[Member]) -> tuple[str, Path | None, dict[Path, int]]:
    """Raise EnsembleError naming the first difference that forbids combining; return `shared_manifest`'s answer."""
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least two model folders, got {len(members)}")
    first = members[0]
    for m in members[1:]:
        if m.loaded.label_names != first.loaded.label_names:
            raise EnsembleError(f"{m.folder} has labels {m.loaded.label_names}, {first.folder} has "
                                f"{first.loaded.label_names}: members must predict the same classes in the same order")
        if m.loaded.preprocessing.color_constancy != first.loaded.preprocessing.color_constancy:
            raise EnsembleError(
                f"{m.folder} uses colour constancy {m.loaded.preprocessing.color_constancy!r}, {first.folder} "
                f"{first.loaded.preprocessing.color_constancy!r}: the ensemble has one preprocessing")
    weights = [m.weight for m in members]
    if min(weights) <= 0:
        raise EnsembleError(f"member weights must be positive, got {weights}")
    return shared_manifest(members)


def _linear_head(member: Member) -> nn.Linear:
    head = member.loaded.model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise EnsembleError(f"{member.folder}: its classifier is {type(head).__name__}, not a linear layer on the "
                            "pooled features, so it cannot become part of the ensemble's head")
    return head


def member_record(member: Member, weight: float) -> dict:
    extras = member.loaded.extras
    train = extras.get("train_config", {})
    return {"folder": str(member.folder), "architecture": member.loaded.architecture,
            "weights_sha256": file_sha256(member.folder / MODEL_WEIGHTS_FILE), "weight": weight,
            "temperature": member.loaded.temperature, "init_weights": extras.get("init_weights"),
            "train_config": {k: train[k] for k in RECORDED_TRAIN_FIELDS if k in train},
            "val_balanced_accuracy": (extras.get("val_metrics") or {}).get("val_balanced_accuracy"),
            "input_size": member.loaded.preprocessing.input_size}


def _parts(member: Member) -> list[tuple[dict, dict]]:
    """(spec, headless state dict) of each backbone a member brings: its own, or an ensemble member's several."""
    model = member.loaded.model
    if member.loaded.architecture == ARCHITECTURE:
        specs = member.model_args["members"]
        return [(dict(spec), backbone.state_dict()) for spec, backbone in zip(specs, model.backbones, strict=True)]
    prefix = _classifier_prefix(model, _linear_head(member))
    spec = {"architecture": member.loaded.architecture, "model_args": member.model_args,
            "mean": list(member.loaded.preprocessing.mean), "std": list(member.loaded.preprocessing.std)}
    return [(spec, {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)})]


def build_ensemble(members: Sequence[Member]) -> tuple[FeatureEnsemble, dict, list[dict]]:
    """The ensemble model (eval mode), its `model_args` and the members' records; weights normalised to 1.

    The members must have passed `check_members`. A member that is itself an ensemble contributes its backbones
    in order and its head as one block (its own member weights and temperatures stay inside it)."""
    total = sum(m.weight for m in members)
    pre = members[0].loaded.preprocessing
    parts = [(m, spec, body) for m in members for spec, body in _parts(m)]
    model_args = {"members": [spec for _, spec, _ in parts], "input_mean": list(pre.mean), "input_std": list(pre.std)}
    ensemble = FeatureEnsemble(num_classes=members[0].loaded.num_classes, **model_args).eval()
    for backbone, (m, spec, body) in zip(ensemble.backbones, parts, strict=True):
        result = backbone.load_state_dict(body, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise EnsembleError(f"{m.folder}: its weights do not fit a headless {spec['architecture']} (missing "
                                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    weight_blocks, bias = [], torch.zeros(members[0].loaded.num_classes)
    records = []
    for m in members:
        head = _linear_head(m)
        scale = (m.weight / total) / m.loaded.temperature
        weight_blocks.append(head.weight.detach() * scale)
        bias += head.bias.detach() * scale
        records.append(member_record(m, m.weight / total))
    with torch.no_grad():
        ensemble.head.weight.copy_(torch.cat(weight_blocks, dim=1))
        ensemble.head.bias.copy_(bias)
    return ensemble, model_args, records


def _classifier_prefix(model: nn.Module, head: nn.Module) -> str:
    name = next(n for n, module in model.named_modules() if module is head)
    return f"{name}."


def load_members(folders: Sequence[str | Path], weights: Sequence[float] | None = None) -> list[Member]:
    weights = list(weights) if weights else [1.0] * len(folders)
    if len(weights) != len(folders):
        raise EnsembleError(f"{len(weights)} weights for {len(folders)} model folders")
    members = []
    for folder, weight in zip(folders, weights, strict=True):
        folder = Path(folder)
        members.append(Member(folder=folder, loaded=load_model_folder(folder, device="cpu"), weight=float(weight),
                              # config.json's model_args (e.g. drop_path_rate): the backbone is rebuilt with them
                              model_args=dict(read_config(folder).get("model_args", {}))))
    return members


def ensemble_summary(members: Sequence[Member], command: str | None) -> dict:
    """The ensemble's train_summary.json: its own command and what each member's training cost."""
    summaries = []
    for m in members:
        path = m.folder / SUMMARY_FILE
        summaries.append(json.loads(path.read_text()) if path.is_file() else {})
    minutes = [s.get("train_minutes") for s in summaries]
    return {"command": command,
            "train_minutes": round(sum(minutes), 1) if None not in minutes else None,
            "epochs_run": " + ".join(str(s.get("epochs_run", "?")) for s in summaries),
            "machine": next((s["machine"] for s in summaries if s.get("machine")), None),
            "member_commands": [s.get("command") or f"not recorded in {m.folder}/{SUMMARY_FILE}"
                                for s, m in zip(summaries, members, strict=True)]}


def write_ensemble(folders: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None, *,
                   command: str | None = None) -> dict:
    """Build the ensemble of `folders` and save it as a model folder in `out`; returns a summary."""
    out = Path(out)
    if out.resolve() in {Path(f).resolve() for f in folders}:
        raise EnsembleError(f"{out} is one of the members; write the ensemble to a new folder")
    members = load_members(folders, weights)
    sha, manifest, excluded = check_members(members)
    ensemble, model_args, records = build_ensemble(members)
    for record, m in zip(records, members, strict=True):
        if excluded.get(m.folder):
            record["trained_on_excluded"] = excluded[m.folder]
    first = members[0]
    pre = first.loaded.preprocessing
    notes = [r["init_weights"].get("licence_note") for r in records if r.get("init_weights")]
    extras = {"tta": first.loaded.extras.get("tta", "flips"), "temperature": 1.0, "manifest_sha256": sha,
              # The card's licence line: every member started from the same kind of weights' terms.
              "init_weights": {"source": "ensemble", "licence_note": next((n for n in notes if n), "")},
              "ensemble": {"members": records, "command": command,
                           "rule": "logits = sum_i w_i z_i / T_i (the members' calibrated geometric mean)"}}
    # The card names the sources from the member whose manifest the ensemble takes (it lists the most).
    widest = next((m for m in members if manifest and m.folder / MANIFEST_FILE == manifest), first)
    if widest.loaded.extras.get("sources"):
        extras["sources"] = widest.loaded.extras["sources"]
    save_model_folder(out, ensemble, architecture=ARCHITECTURE, label_names=first.loaded.label_names,
                      preprocessing=pre, model_args=model_args, extras=extras)
    manifest = manifest or first.folder / MANIFEST_FILE
    if manifest.is_file():
        shutil.copyfile(manifest, out / MANIFEST_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(ensemble_summary(members, command), indent=2) + "\n")
    size_mb = (out / MODEL_WEIGHTS_FILE).stat().st_size / 2**20
    leaks = [f"{m.folder} trained on {excluded[m.folder]} image(s) that {manifest} leaves out of training as "
             "near-duplicates of validation or test images (recorded as trained_on_excluded)"
             for m in members if excluded.get(m.folder)]
    return {"out": str(out), "members": records, "input_size": pre.input_size, "weights_mb": round(size_mb, 1),
            "notes": preprocessing_notes(members) + leaks}


def preprocessing_notes(members: Sequence[Member]) -> list[str]:
    """What the ensemble changes for members whose own preprocessing differs from the first one's."""
    first = members[0].loaded.preprocessing
    notes = []
    for m in members[1:]:
        pre = m.loaded.preprocessing
        for field in ("input_size", "crop_pct", "interpolation", "fov_crop"):
            mine, theirs = getattr(pre, field), getattr(first, field)
            if mine != theirs:
                notes.append(f"{m.folder} was served with {field} = {mine}; the ensemble serves every member with "
                             f"{members[0].folder}'s {field} = {theirs} (choose the size again on validation with "
                             "scripts/choose_input_size.py if it matters)")
    return notes
