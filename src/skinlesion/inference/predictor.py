"""The Predictor: a model folder turned into calibrated, TTA-averaged predictions and explanations.

Everything is rebuilt from the folder (`modelfolder.load_model_folder`); decoding is `imageio.load_rgb`,
preprocessing is `transforms.eval_transform` (the evaluation code path), views come from `tta.py`,
temperature and the energy score from `calibration.py`. `forward_views_with_features` is the single
place logits (and the penultimate-layer features, `features.py`) are computed, for the app, the CLIs
and evaluation alike; `forward_views` is its logits-only view.

Which forward runs is chosen once, at load (`variants.py`), the fastest correct one first: onnxruntime
over the folder's model.onnx when it is installed and the file matches the weights and the detector's
taps; else PyTorch in `channels_last` under `inference_mode`; `eager` (the default memory format, and a
second forward for every CAM) is the reference the others are tested against. `explain` runs the
backbone once: the CAM starts from the feature map the prediction's forward returned (`cam.py`).

From the features, when the model folder has them (`skinlesion fit-features`):
- the out-of-distribution detector (`ood.py`, `ood_stats.safetensors`): `Prediction.out_of_distribution`;
- the similar-cases index (`cases.py`, `case_index.safetensors`): `Prediction.similar_cases` and the
  similarity-weighted `retrieval_vote`.
A folder without them predicts as before, with both reported as unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from ..constants import MANIFEST_FILE, MODEL_WEIGHTS_FILE, ONNX_FILE
from ..data.transforms import Preprocessing, eval_transform
from ..imageio import ImageSource, load_rgb
from ..models.folder import LoadedModel, ModelFolderError, file_sha256, load_model_folder, resolve_folder
from ..taxonomy import describe_label, malignant_indices
from . import calibration, cases, ood, overlay
from . import features as feature_split
from . import tta as tta_views
from .onnx_runtime import OnnxForward, open_onnx
from .prediction import Explanation, Prediction
from .variants import AUTO, ModelForward, choose, requested_variant

logger = logging.getLogger(__name__)

DEFAULT_TTA = "flips"
DEFAULT_UNCERTAIN_BELOW = 0.5
# Fewer than 3 of 4 flip views agreeing with the final label means the call hinges on orientation.
MIN_AGREEMENT = 0.75
OOD_UNAVAILABLE = ("this model folder has no out-of-distribution statistics, so whether the image is dermoscopic "
                   "is not checked; fit them with `skinlesion fit-features --model FOLDER --data DATA`")
CASES_UNAVAILABLE = ("this model folder has no case index; build it with "
                     "`skinlesion fit-features --model FOLDER --data DATA`")
class Predictor:
    """Calibrated skin-lesion classification with TTA and CAM explanations, built from a model folder."""

    def __init__(self, loaded: LoadedModel, *, tta: str | None = None, device: str | torch.device | None = None,
                 variant: str = AUTO, onnx_forward: OnnxForward | None = None, variant_note: str | None = None,
                 ood_detector: ood.OodDetector | None = None,
                 case_index: cases.CaseIndex | None = None, cases_k: int = cases.DEFAULT_K,
                 vote_k: int = cases.DEFAULT_VOTE_K, taps: Sequence[str] | None = None):
        """`variant`: AUTO or one of `variants.VARIANTS`; onnxruntime needs `onnx_forward` (from_pretrained
        opens the folder's model.onnx). `variant_note`: why onnxruntime is not used, when the caller knows."""
        self.loaded = loaded
        self.device = torch.device(device) if device is not None else next(loaded.model.parameters()).device
        self.loaded.model.to(self.device).eval()
        self.tta = tta or str(loaded.extras.get("tta", DEFAULT_TTA))
        tta_views.get_views(self.tta)  # fail now on an unknown mode, not on the first request
        # Penultimate-layer features: probed once (one small forward) so an architecture whose head is not
        # classifier(pre_logits) reports them unavailable instead of computing wrong ones.
        self.features_unavailable: str | None = None  # why there are no features, when there are none
        # Features are the D penultimate values (`feature_dim`, what the case index uses), then the
        # statistics of the modules the OOD detector taps (`ood_feature_dim` in all).
        self.taps = tuple(taps if taps is not None else (ood_detector.taps if ood_detector is not None else ()))
        self.feature_dim: int | None = None
        self.ood_feature_dim: int | None = None
        self.feature_widths: list[int] = []
        try:
            size = loaded.preprocessing.input_size
            # [D, then 2C per tap], from one forward
            self.feature_widths = feature_split.probe_feature_widths(self.loaded.model, size, taps=self.taps)
            self.feature_dim, self.ood_feature_dim = self.feature_widths[0], sum(self.feature_widths)
        except feature_split.FeatureSplitError as err:
            self.features_unavailable = f"{loaded.architecture}: {err}"
            self.feature_dim = self.ood_feature_dim = None
        # The variant, once: onnxruntime only when its outputs serve this folder exactly as PyTorch would.
        self._forward: ModelForward = choose(
            self.loaded.model, variant, device=self.device, taps=self.taps, features=self.features_unavailable is None,
            feature_width=self.ood_feature_dim, onnx=onnx_forward, note=variant_note,
            needs_features=(ood_detector is not None and ood_detector.needs_features) or case_index is not None)
        if self._forward.onnx is not None and not self._forward.onnx.has_features:
            self.features_unavailable = (f"{self._forward.onnx.source} outputs logits only; re-export it with "
                                         "`skinlesion export onnx --model FOLDER`")
        self._cam_from_map: bool | None = None  # probed on the first explain (cam.py imports in seconds)
        self.ood_detector = ood_detector
        self.case_index = case_index
        if ood_detector is not None and ood_detector.needs_features:
            self._require_features(ood_detector.source)
            ood_detector.check_feature_dim(self.ood_feature_dim)
        if case_index is not None:
            self._require_features(case_index.source)
            case_index.check_feature_dim(self.feature_dim)
        if cases_k < 1 or vote_k < 1:
            raise ValueError(f"cases_k and vote_k must be at least 1, got {cases_k} and {vote_k}")
        self.cases_k, self.vote_k = int(cases_k), int(vote_k)
        transform = eval_transform(loaded.preprocessing)
        # eval_transform is [eval_geometry, to-float ops]: split it so the uint8 crop ("what the model
        # sees") and the tensor come from one resize, through exactly the transforms evaluation uses.
        geometry, *to_float = transform.transforms
        if not isinstance(geometry, v2.Compose) or not to_float:
            raise RuntimeError("transforms.eval_transform no longer starts with eval_geometry; update Predictor")
        self._geometry = geometry
        self._to_float = v2.Compose(to_float)
        # One model, several callers (app events run in threads): CAM hooks live on the shared module,
        # so a PyTorch forward must never run while another thread's CAM hooks are attached.
        self._lock = self._forward.lock

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, revision: str | None = None,
                        device: str | torch.device | None = None, tta: str | None = None,
                        use_onnx: bool | None = None, taps: Sequence[str] | None = None,
                        feature_extras: bool = True, variant: str = AUTO) -> Predictor:
        """Load a model folder or Hub id (revision pinned). `variant`: AUTO = the fastest of VARIANTS this
        folder and machine allow (onnxruntime when it is installed, on CPU, and model.onnx matches the
        weights and the detector's taps; else channels_last), or one by name (onnxruntime then raises
        when it cannot serve). `use_onnx`: the older switch, True = onnxruntime, False = PyTorch. `taps`:
        modules whose statistics the features carry (default: what the folder's OOD detector taps).
        `feature_extras=False` skips the folder's OOD statistics and case index (for refitting them)."""
        variant = requested_variant(variant, use_onnx)
        folder = resolve_folder(path_or_hub_id, revision)
        loaded = load_model_folder(folder, device=device)
        loaded.source = str(path_or_hub_id)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        weights_sha = file_sha256(folder / MODEL_WEIGHTS_FILE)
        onnx_forward, note = None, None
        if variant in (AUTO, "onnxruntime"):
            onnx_forward, note = open_onnx(folder, required=variant == "onnxruntime", device=dev,
                                           weights_sha256=weights_sha)
            if note is not None:
                # A folder without model.onnx is ordinary (a fresh training run); one that has an unusable one is not.
                logger.log(logging.WARNING if (folder / ONNX_FILE).is_file() else logging.INFO,
                           "%s: running PyTorch, not onnxruntime: %s", folder, note)
        detector, index = (load_feature_extras(folder, loaded, weights_sha256=weights_sha) if feature_extras
                           else (None, None))
        return cls(loaded, tta=tta, device=dev, variant=variant, onnx_forward=onnx_forward, variant_note=note,
                   ood_detector=detector, case_index=index, taps=taps)

    # -- the parts --------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        return self.loaded.label_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.loaded.preprocessing

    @property
    def backend(self) -> str:
        """"onnxruntime" or "torch": what `forward_views` runs on (`variant` says which PyTorch)."""
        return "onnxruntime" if self._forward.onnx is not None else "torch"

    @property
    def variant(self) -> str:
        """Which of `variants.VARIANTS` serves this Predictor (chosen at load)."""
        return self._forward.variant

    @property
    def variant_note(self) -> str | None:
        """Why a faster variant was passed over (e.g. no or a stale model.onnx); None when the fastest serves."""
        return self._forward.note

    @property
    def ood_status(self) -> str:
        """One line for people: which out-of-distribution check runs, or why none does."""
        if self.ood_detector is None:
            return f"Out-of-distribution check unavailable: {OOD_UNAVAILABLE}."
        d = self.ood_detector
        share = f"{100 * d.quantile:g}% of validation images" if d.quantile is not None else "validation images"
        return (f"Out-of-distribution check: {d.method} score on the model's features, threshold {d.threshold:.4g} "
                f"(flags {share}).")

    @property
    def cases_status(self) -> str:
        if self.case_index is None:
            return f"Similar cases unavailable: {CASES_UNAVAILABLE}."
        return (f"Similar cases: {len(self.case_index)} training images, k = {self.cases_k} nearest lesions shown, "
                f"vote over {self.vote_k}.")

    def _require_features(self, source: str) -> None:
        if self.features_unavailable is not None:
            raise ModelFolderError(f"{source} needs the model's penultimate-layer features, which are unavailable: "
                                   f"{self.features_unavailable}")

    def preprocess(self, image: ImageSource) -> tuple[torch.Tensor, Image.Image]:
        """Any image source -> (normalised (3, S, S) tensor, the uint8 S x S crop as the model sees it)."""
        return self._preprocess_rgb(load_rgb(image))

    def _preprocess_rgb(self, rgb: Image.Image) -> tuple[torch.Tensor, Image.Image]:
        crop = self._geometry(rgb)  # (3, S, S) uint8
        model_input = Image.fromarray(crop.permute(1, 2, 0).numpy())
        return self._to_float(crop), model_input

    def forward_views(self, x: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (V, B, K) raw logits from ONE batched forward over all TTA views."""
        return self.forward_views_with_features(x, tta)[0]

    def forward_views_with_features(self, x: torch.Tensor, tta: str | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> ((V, B, K) raw logits, (B, D) identity-view penultimate features or None), one forward.

        Features are None when this model has none (`features_unavailable` says why).
        """
        views = tta_views.get_views(tta or self.tta)
        n = x.shape[0]
        logits, feats, _ = self._forward(tta_views.stack_views(x, views))  # (V*B, K), (V*B, D)
        # Features from the identity view only (features.py): the OOD score and the cases do not depend on TTA.
        return logits.reshape(len(views), n, -1), (feats[:n] if feats is not None else None)

    def model_input(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) crops from `geometry` -> the normalised float batch, in one call for the batch
        (colour constancy, scaling and normalisation are per pixel and per image: batching changes nothing)."""
        return self._to_float(crops)

    @property
    def geometry(self) -> v2.Compose:
        """Decoded RGB image -> uint8 (3, S, S) crop: the eval transform's resize and crop (`eval_geometry`)."""
        return self._geometry

    # -- predictions --------------------------------------------------------------------------------
    def ood_scores(self, view_logits: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor | None:
        """(V, B, K) logits and (B, D) identity-view features -> (B,) detector scores; None without a detector."""
        if self.ood_detector is None or (features is None and self.ood_detector.needs_features):
            return None
        return self.ood_detector.score(features, view_logits[0].float())

    def nearest_cases(self, features: torch.Tensor | None, *, exclude: torch.Tensor | None = None
                      ) -> list[list[cases.Case]] | None:
        """(B, D) features -> per image the max(cases_k, vote_k) nearest lesions; None without an index."""
        if self.case_index is None or features is None:
            return None
        return self.case_index.search(features, max(self.cases_k, self.vote_k), exclude=exclude)

    def predictions_from_logits(self, view_logits: torch.Tensor, *, features: torch.Tensor | None = None,
                                tta: str | None = None, top_k: int = 3,
                                model_inputs: Sequence[Image.Image | None] | None = None) -> list[Prediction]:
        """(V, B, K) view logits and (B, D) features (from `forward_views_with_features`) -> B predictions.

        Without `features` the features-based parts (OOD check, similar cases) are reported unavailable.
        """
        mode = tta or self.tta
        n_views, batch, n_classes = view_logits.shape
        if n_classes != len(self.label_names):
            raise ValueError(f"logits have {n_classes} classes, the model has {len(self.label_names)}")
        if n_views != len(tta_views.get_views(mode)):
            raise ValueError(f"logits have {n_views} views but TTA mode {mode!r} has {len(tta_views.get_views(mode))}")
        view_logits = view_logits.detach().float().cpu()
        temperature = self.loaded.temperature
        probs = calibration.calibrated_probs(view_logits, temperature)   # (B, K)
        energies = calibration.energy_score(view_logits, temperature)    # (B,)
        detector_scores = self.ood_scores(view_logits, features)         # (B,) or None
        neighbours = self.nearest_cases(features)
        view_argmax = view_logits.argmax(dim=-1)                         # (V, B)
        final = probs.argmax(dim=-1)                                     # (B,)
        agreement = (view_argmax == final.unsqueeze(0)).float().mean(dim=0)
        detector = self.ood_detector if detector_scores is not None else None
        uncertain_below = float(self.loaded.extras.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW))
        malignant = malignant_indices(self.label_names)
        k = max(1, min(int(top_k), n_classes))
        names = self.label_names
        results = []
        for b in range(batch):
            p = probs[b].tolist()
            label = names[int(final[b])]
            order = sorted(range(n_classes), key=lambda i: p[i], reverse=True)[:k]
            score = float(detector_scores[b]) if detector is not None else float(energies[b])
            found = neighbours[b] if neighbours is not None else None
            results.append(Prediction(
                label=label,
                label_name=describe_label(label).name,
                confidence=p[int(final[b])],
                probs={name: p[i] for i, name in enumerate(names)},
                top_k=[(names[i], p[i]) for i in order],
                malignant_prob=float(sum(p[i] for i in malignant)) if malignant else None,
                agreement=float(agreement[b]),
                view_labels=[names[int(i)] for i in view_argmax[:, b]],
                ood_score=score,
                out_of_distribution=bool(detector is not None and score < detector.threshold),
                uncertain=bool(p[int(final[b])] < uncertain_below or float(agreement[b]) < MIN_AGREEMENT),
                tta=mode,
                ood_method=detector.method if detector is not None else None,
                ood_threshold=float(detector.threshold) if detector is not None else None,
                energy_score=float(energies[b]),
                similar_cases=None if found is None else [c.to_dict() for c in found[:self.cases_k]],
                retrieval_vote=None if found is None else cases.retrieval_vote(found[:self.vote_k], names,
                                                                                prior=self.case_index.class_prior),
                model_input=model_inputs[b] if model_inputs is not None else None,
            ))
        return results

    def predict_tensors(self, x: torch.Tensor, *, tta: str | None = None, top_k: int = 3,
                        model_inputs: Sequence[Image.Image | None] | None = None) -> list[Prediction]:
        """(B, 3, S, S) preprocessed batch -> B predictions (the CLIs' batched path)."""
        logits, feats = self.forward_views_with_features(x, tta)
        return self.predictions_from_logits(logits, features=feats, tta=tta, top_k=top_k, model_inputs=model_inputs)

    def predict(self, images: ImageSource | Sequence[ImageSource], tta: str | None = None, top_k: int = 3,
                *, batch_size: int = 32) -> Prediction | list[Prediction]:
        """A path, bytes, PIL image or numpy array -> one Prediction; a list of them -> a list.

        Any unreadable input raises `imageio.ImageLoadError` naming it.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            tensors, crops = zip(*(self.preprocess(item) for item in items[start:start + batch_size]), strict=True)
            results.extend(self.predict_tensors(torch.stack(tensors), tta=tta, top_k=top_k, model_inputs=crops))
        return results[0] if single else results

    # -- explanations -------------------------------------------------------------------------------
    def _cam_can_start_from_map(self, method: str) -> bool:
        """Whether `explain` may take the CAM's activations from the prediction's forward (see `cam.py`)."""
        from . import cam

        if self.variant == "eager" or method.strip().lower() in cam.NEEDS_WHOLE_MODEL:
            return False  # eager: the reference path, a second forward as before
        if not self._forward.has_map:
            return False  # a model.onnx exported before the map output existed
        if self._cam_from_map is None:
            with self._lock:
                self._cam_from_map = cam.cam_from_map_supported(self.loaded.model, self.preprocessing.input_size)
        return self._cam_from_map
    def class_index(self, label: str) -> int:
        try:
            return self.label_names.index(label)
        except ValueError as err:
            raise ValueError(f"unknown label {label!r}; this model's labels are {self.label_names}") from err

    def explain(self, image: ImageSource, method: str = "gradcam", target: str | None = None,
                tta: str | None = None, alpha: float = 0.5) -> Explanation:
        """Predict `image` and explain `target` (default: the predicted label) with a TTA-averaged CAM.

        The heatmap and overlay are at the original image's resolution; CAM always runs in PyTorch, from
        the feature map of the prediction's own forward when the variant and method allow (one backbone
        pass per request), else on the whole model (`eager`, ScoreCAM).
        """
        # pytorch-grad-cam takes seconds to import; prediction-only users (CLI, evaluation) never pay it.
        from . import cam

        # Validate the cheap arguments before any decoding or model work.
        cam.get_cam_method(method)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        target_index = self.class_index(target) if target is not None else None
        mode = tta or self.tta
        views = tta_views.get_views(mode)
        rgb = load_rgb(image)
        x, model_input = self._preprocess_rgb(rgb)
        batch = x.unsqueeze(0)
        from_map = self._cam_can_start_from_map(method)
        logits, feats, feature_map = self._forward(tta_views.stack_views(batch, views), with_map=from_map)
        prediction = self.predictions_from_logits(logits.reshape(len(views), 1, -1),
                                                  features=feats[:1] if feats is not None else None, tta=mode,
                                                  model_inputs=[model_input])[0]
        index = self.class_index(prediction.label) if target_index is None else target_index
        target_label = self.label_names[index]
        with self._lock:
            if feature_map is not None:
                maps = cam.compute_cam_from_map(self.loaded.model, feature_map, tuple(x.shape[-2:]), index,
                                                method=method, views=views)
            else:
                maps = cam.compute_cam(self.loaded.model, batch.contiguous(memory_format=self._forward.memory_format),
                                       index, method=method, views=views)
        region = overlay.image_region(rgb, self.preprocessing)  # the field-of-view crop, when the folder makes one
        heatmap = overlay.heatmap_to_original(maps[0].numpy(), rgb.size, self.preprocessing, region)
        blended = overlay.overlay_heatmap(rgb, heatmap, alpha=alpha,
                                          box=overlay.input_box(rgb.size, self.preprocessing, region))
        return Explanation(heatmap=heatmap, overlay=blended, target_label=target_label, method=method.lower(),
                           prediction=prediction)


def load_feature_extras(folder: Path, loaded: LoadedModel, *, weights_sha256: str | None = None
                        ) -> tuple[ood.OodDetector | None, cases.CaseIndex | None]:
    """The folder's OOD detector and case index (None when config.json names none), checked against the
    folder's weights (sha256) and, for the index, its split manifest."""
    extras = loaded.extras
    if not extras.get(ood.EXTRAS_KEY) and not extras.get(cases.EXTRAS_KEY):
        return None, None
    weights_sha = weights_sha256 or file_sha256(folder / MODEL_WEIGHTS_FILE)
    manifest_sha = extras.get("manifest_sha256")
    if manifest_sha is None and (folder / MANIFEST_FILE).is_file():
        from ..data.splits import manifest_hash

        manifest_sha = manifest_hash(folder / MANIFEST_FILE)
    detector = ood.load_detector(folder, extras, weights_sha256=weights_sha)
    index = cases.load_index(folder, extras, manifest_sha256=manifest_sha, weights_sha256=weights_sha)
    return detector, index
