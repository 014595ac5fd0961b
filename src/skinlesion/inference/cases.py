"""Similar confirmed cases: content-based image retrieval with the classifier's own features.

Tschandl et al. (JAMA Dermatology 2019) showed that the nearest training images in a classifier's
feature space, with their confirmed diagnoses, are about as accurate as its softmax and easier to
check. The index holds the TRAINING split's penultimate-layer features (identity view, see
`features.py`), L2-normalised, centred and reduced by PCA to `dims` dimensions, normalised again, so
a dot product is a cosine similarity. With each vector: image id, label, HAM10000's `dx_type`
(histo / follow_up / consensus / confocal) and `lesion_id` when known. No pixels.

A query returns the k nearest *lesions*: several images of one lesion count once (the most similar
one is kept). The retrieval vote is the similarity-weighted share of each class among them, each
case's weight divided by its class's share of the index's lesions: the index inherits the training
split's mix (two thirds nevi), while the network was trained with class-balanced sampling, so an
unweighted vote answers under another prior than the softmax beside it (and says "nevus" too often).

The file (`case_index.safetensors`) records the sha256 of the split manifest and of the weights it
was built with; the Predictor refuses an index whose manifest hash differs from the model folder's:
images from a model folder's index must never be shown for a model trained on another split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.folder import CASE_INDEX_FILE, ModelFolderError, save_safetensors_within
from .features import l2_normalise
from .ood import read_safetensors

Tensor = torch.Tensor

EXTRAS_KEY = "case_index"            # config.json skinlesion section
FORMAT = "skinlesion-case-index-1"
DEFAULT_DIMS = 128
DEFAULT_K = 5                        # cases shown
# Lesions in the retrieval vote: 20 beat 5 and 10 on the validation split (vote balanced accuracy 0.710 vs
# 0.663 / 0.682 for the fine-tuned EfficientNet-Lite0; a tie for the ResNet-18): scripts/measure_ood.py.
DEFAULT_VOTE_K = 20
MAX_FILE_BYTES = 5 * 1024 * 1024
FIX = "rebuild it with `skinlesion fit-features --model FOLDER --data DATA`"


class CaseIndexError(ModelFolderError):
    """The case index is missing, unreadable, or does not belong to this model."""


class ManifestMismatchError(CaseIndexError):
    """The index was built from another split manifest than the one the model was trained with."""


@dataclass(frozen=True)
class Case:
    image_id: str
    label: str
    similarity: float                # cosine similarity in the index's space, in [-1, 1]
    dx_type: str | None = None       # how the diagnosis was confirmed (HAM10000: histo, follow_up, ...)
    lesion_id: str | None = None
    source: str | None = None        # the data source it comes from (ham10000, isic2017, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CaseIndex:
    vectors: Tensor                  # (N, d) unit rows
    centre: Tensor                   # (D,) mean of the L2-normalised training features
    components: Tensor               # (D, d) PCA directions
    image_ids: list[str]
    labels: list[str]
    dx_types: list[str | None]
    lesion_ids: list[str | None]
    manifest_sha256: str
    weights_sha256: str = ""
    source: str = ""                 # file it was read from (error messages)
    sources: list[str | None] | None = None  # each case's data source; None for indexes built before sources
    thumbnails: Any = None           # case_thumbnails.CaseThumbnails when the folder ships pictures
    class_prior: dict[str, float] = field(init=False, repr=False)  # share of the indexed lesions per label
    _group_codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.vectors.shape[0]
        if self.sources is None:
            self.sources = [None] * n
        if len(self.sources) != n:
            raise ValueError(f"case index: {n} vectors but {len(self.sources)} sources")
        if not (len(self.image_ids) == len(self.labels) == len(self.dx_types) == len(self.lesion_ids) == n):
            raise ValueError(f"case index: {n} vectors but {len(self.image_ids)} ids, {len(self.labels)} labels, "
                             f"{len(self.dx_types)} dx types, {len(self.lesion_ids)} lesion ids")
        # A case without a lesion id is its own lesion.
        groups = [lesion or f"image:{image}" for lesion, image in zip(self.lesion_ids, self.image_ids, strict=True)]
        _, codes = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
        self._group_codes = codes.astype(np.int64)
        first_of_group = np.unique(self._group_codes, return_index=True)[1]
        lesion_labels = [self.labels[i] for i in first_of_group]
        self.class_prior = {label: lesion_labels.count(label) / len(lesion_labels) for label in set(lesion_labels)}

    @property
    def feature_dim(self) -> int:
        return int(self.centre.shape[0])

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def check_feature_dim(self, feature_dim: int | None) -> None:
        if feature_dim != self.feature_dim:
            have = "no penultimate-layer features" if feature_dim is None else f"{feature_dim}-d features"
            raise CaseIndexError(f"{self.source or CASE_INDEX_FILE}: built from {self.feature_dim}-d features, but the "
                                 f"model has {have}; {FIX}")

    def embed(self, features: Tensor) -> Tensor:
        """(B, D) penultimate-layer features -> (B, d) unit vectors in the index's space. Wider features
        (the OOD detector's tapped statistics after the D penultimate values) use their first D columns."""
        if features.shape[-1] < self.feature_dim:
            raise CaseIndexError(f"{self.source or CASE_INDEX_FILE}: {features.shape[-1]}-d features for an index "
                                 f"of {self.feature_dim}-d ones; {FIX}")
        return l2_normalise((l2_normalise(features[..., :self.feature_dim]) - self.centre) @ self.components)

    def similarities(self, features: Tensor) -> Tensor:
        """(B, D) features -> (B, N) cosine similarities to every indexed case."""
        return self.embed(features) @ self.vectors.float().T

    def exclusion_mask(self, image_ids: Iterable[str] = (), lesion_ids: Iterable[str | None] = ()) -> Tensor:
        """(N,) True for indexed cases sharing an image id or a lesion id with the given ones."""
        images, lesions = set(image_ids), {x for x in lesion_ids if x}
        return torch.tensor([i in images or (lesion is not None and lesion in lesions)
                             for i, lesion in zip(self.image_ids, self.lesion_ids, strict=True)], dtype=torch.bool)

    def search(self, features: Tensor, k: int = DEFAULT_K, *, exclude: Tensor | None = None) -> list[list[Case]]:
        """The k most similar lesions per query (best image of each), most similar first.

        `exclude`: (N,) bool mask of cases never returned (e.g. the evaluated set's own lesions).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        sims = self.similarities(features)                       # (B, N)
        if exclude is not None:
            sims = sims.masked_fill(exclude.to(sims.device)[None, :], float("-inf"))
        n = sims.shape[1]
        # Usually the top 4k images hold k distinct lesions (HAM10000 has <= 6 images per lesion);
        # when they do not, the whole row is sorted.
        first = min(n, 4 * k + 8)
        top_vals, top_idx = sims.topk(first, dim=1)
        results = []
        for b in range(sims.shape[0]):
            picked = self._distinct(top_vals[b].tolist(), top_idx[b].tolist(), k)
            if len(picked) < k and first < n:
                vals, idx = sims[b].sort(descending=True)
                picked = self._distinct(vals.tolist(), idx.tolist(), k)
            results.append([self.case(i, s) for i, s in picked])
        return results

    def _distinct(self, values: Sequence[float], indices: Sequence[int], k: int) -> list[tuple[int, float]]:
        seen: set[int] = set()
        picked = []
        for value, i in zip(values, indices, strict=True):
            if value == float("-inf"):
                break
            group = int(self._group_codes[i])
            if group in seen:
                continue
            seen.add(group)
            picked.append((i, value))
            if len(picked) == k:
                break
        return picked

    def case(self, i: int, similarity: float) -> Case:
        # fp16 vectors put a self-match a hair above 1: clamp to the cosine's range.
        return Case(image_id=self.image_ids[i], label=self.labels[i], similarity=min(1.0, max(-1.0, float(similarity))),
                    dx_type=self.dx_types[i], lesion_id=self.lesion_ids[i], source=self.sources[i])


# ---------------------------------------------------------------------------------------------
# Pure functions: building, voting, scoring
# ---------------------------------------------------------------------------------------------

def fit_projection(features: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """PCA of the L2-normalised features: (centre (D,), components (D, d)), d = min(dims, D, N)."""
    x = l2_normalise(features).double()
    centre = x.mean(dim=0)
    # Economy SVD of the centred matrix: rows of vh are the principal directions, largest first.
    _, _, vh = torch.linalg.svd(x - centre, full_matrices=False)
    d = max(1, min(int(dims), vh.shape[0]))
    return centre.float(), vh[:d].T.float().contiguous()


def build_index(features: Tensor, *, image_ids: Sequence[str], labels: Sequence[str],
                dx_types: Sequence[str | None], lesion_ids: Sequence[str | None], manifest_sha256: str,
                weights_sha256: str = "", dims: int = DEFAULT_DIMS,
                sources: Sequence[str | None] | None = None) -> CaseIndex:
    """TRAINING features (N, D) and their metadata -> a CaseIndex (vectors stored as fp16, like the file)."""
    if features.dim() != 2 or features.shape[0] != len(image_ids):
        raise ValueError(f"features {tuple(features.shape)} do not match {len(image_ids)} image ids")
    if not manifest_sha256:
        raise ValueError("a case index needs the sha256 of the split manifest it was built from")
    centre, components = fit_projection(features, dims)
    vectors = l2_normalise((l2_normalise(features) - centre) @ components)
    return CaseIndex(vectors=vectors.half().float(), centre=centre, components=components,
                     image_ids=list(image_ids), labels=list(labels), dx_types=list(dx_types),
                     lesion_ids=list(lesion_ids), manifest_sha256=manifest_sha256, weights_sha256=weights_sha256,
                     sources=None if sources is None else list(sources))


def retrieval_vote(cases: Sequence[Case], label_names: Sequence[str],
                   prior: Mapping[str, float] | None = None) -> dict[str, float]:
    """Similarity-weighted share of each class among `cases` (negative similarities count 0).

    `prior` (the index's `class_prior`): each case's weight is divided by its class's share of the
    index, i.e. the vote answers as if every class were equally common, like the balanced-trained softmax.
    """
    def weight(case: Case) -> float:
        return 1.0 if prior is None else 1.0 / max(prior.get(case.label, 0.0), 1e-6)

    weights = {name: 0.0 for name in label_names}
    for case in cases:
        if case.label in weights:
            weights[case.label] += max(case.similarity, 0.0) * weight(case)
    total = sum(weights.values())
    if total <= 0:
        counts = {name: sum(weight(c) for c in cases if c.label == name) for name in label_names}
        total = sum(counts.values())
        return {name: (counts[name] / total if total else 0.0) for name in label_names}
    return {name: w / total for name, w in weights.items()}


def precision_at_k(query_labels: Sequence[str], neighbours: Sequence[Sequence[Case]], k: int) -> dict[str, Any]:
    """Share of each query's first k cases with the query's own label, averaged per class and over classes."""
    per_query: dict[str, list[float]] = {}
    for label, cases in zip(query_labels, neighbours, strict=True):
        top = list(cases)[:k]
        if top:
            per_query.setdefault(label, []).append(sum(c.label == label for c in top) / k)
    per_class = {label: float(np.mean(values)) for label, values in sorted(per_query.items())}
    return {"k": k, "per_class": per_class,
            "macro": float(np.mean(list(per_class.values()))) if per_class else None,
            "n_queries": {label: len(values) for label, values in sorted(per_query.items())}}


# ---------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------

def save_index(folder: str | Path, index: CaseIndex) -> Path:
    """Write `case_index.safetensors` atomically (vectors fp16); refuses to exceed MAX_FILE_BYTES."""

    path = Path(folder) / CASE_INDEX_FILE
    label_names = sorted(set(index.labels))
    tensors = {"vectors": index.vectors.half().contiguous(), "centre": index.centre.float().contiguous(),
               "components": index.components.float().contiguous(),
               "labels": torch.tensor([label_names.index(x) for x in index.labels], dtype=torch.int16)}
    metadata = {"format": FORMAT, "manifest_sha256": index.manifest_sha256, "weights_sha256": index.weights_sha256,
                "label_names": json.dumps(label_names), "image_ids": json.dumps(index.image_ids),
                "dx_types": json.dumps(index.dx_types), "lesion_ids": json.dumps(index.lesion_ids),
                "sources": json.dumps(index.sources)}
    return save_safetensors_within(
        path, tensors, metadata, max_bytes=MAX_FILE_BYTES,
        over_budget=lambda size: CaseIndexError(f"{path}: {size / 2**20:.1f} MB is over the {MAX_FILE_BYTES // 2**20} "
                                                f"MB budget; use fewer --index-dims (now {index.dims})"))


def config_entry(index: CaseIndex, **record: Any) -> dict[str, Any]:
    sources = [s for s in index.sources if s]
    by_source = {k: int(v) for k, v in zip(*np.unique(sources, return_counts=True), strict=True)} if sources else {}
    return {"file": CASE_INDEX_FILE, "n_cases": len(index), **({"sources": by_source} if by_source else {}), "n_lesions": int(index._group_codes.max() + 1),
            "dims": index.dims, "feature_dim": index.feature_dim, "manifest_sha256": index.manifest_sha256,
            "classes": {k: int(v) for k, v in zip(*np.unique(index.labels, return_counts=True), strict=True)},
            **record}


def read_index(path: Path) -> CaseIndex:
    """The index in `path`, or CaseIndexError naming it."""
    tensors, meta = read_safetensors(path, CaseIndexError)
    if meta.get("format") != FORMAT:
        raise CaseIndexError(f"{path}: not a case index (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        label_names = json.loads(meta["label_names"])
        codes = tensors["labels"].long().tolist()
        index = CaseIndex(vectors=tensors["vectors"].float(), centre=tensors["centre"].float(),
                          components=tensors["components"].float(), image_ids=json.loads(meta["image_ids"]),
                          labels=[label_names[c] for c in codes], dx_types=json.loads(meta["dx_types"]),
                          lesion_ids=json.loads(meta["lesion_ids"]), manifest_sha256=meta["manifest_sha256"],
                          weights_sha256=meta.get("weights_sha256", ""), source=str(path),
                          sources=json.loads(meta["sources"]) if "sources" in meta else None)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise CaseIndexError(f"{path}: incomplete or inconsistent case index ({err!r}); {FIX}") from err
    d, dims = index.centre.shape[0], index.vectors.shape[1]
    if index.components.shape != (d, dims) or index.vectors.dim() != 2 or index.centre.dim() != 1:
        raise CaseIndexError(f"{path}: tensor shapes do not fit together (vectors {tuple(index.vectors.shape)}, "
                             f"centre {tuple(index.centre.shape)}, components {tuple(index.components.shape)}); {FIX}")
    return index


def load_index(folder: str | Path, extras: Mapping[str, Any], *, manifest_sha256: str | None,
               weights_sha256: str | None) -> CaseIndex | None:
    """The folder's index, or None when config.json names none (the feature is then off).

    `manifest_sha256`: the split manifest the model was trained with (config.json's
    skinlesion.manifest_sha256, else the hash of the folder's split_manifest.csv).
    """
    entry = extras.get(EXTRAS_KEY)
    if not entry:
        return None
    path = Path(folder) / str(entry.get("file", CASE_INDEX_FILE))
    if not path.is_file():
        raise CaseIndexError(f"{path}: missing, but config.json's skinlesion.{EXTRAS_KEY} names it; {FIX}")
    index = read_index(path)
    check_manifest(index, manifest_sha256)
    if weights_sha256 is not None and index.weights_sha256 != weights_sha256:
        raise CaseIndexError(f"{path}: built with other weights than this folder's model.safetensors "
                             f"(stale after retraining?); {FIX}")
    from .case_thumbnails import load_thumbnails

    index.thumbnails = load_thumbnails(folder, index.image_ids, index.manifest_sha256)
    return index


def check_manifest(index: CaseIndex, manifest_sha256: str | None) -> None:
    if manifest_sha256 is None or index.manifest_sha256 != manifest_sha256:
        model_side = "records no split manifest" if manifest_sha256 is None else \
            f"was trained on split manifest {manifest_sha256[:12]}"
        raise ManifestMismatchError(
            f"{index.source or CASE_INDEX_FILE}: built from split manifest {index.manifest_sha256[:12]}, but the model "
            f"{model_side}. Images from a model folder's index must never be shown for a model trained on "
            f"another split; {FIX}")
