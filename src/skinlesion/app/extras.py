"""The out-of-distribution refusal and the similar-cases panel, computed from `/predict`'s details alone.

`CaseImages` says where the cases' pictures come from (a local folder, or a Hub dataset loaded once at
start-up) or why there are none; `extras_view` turns one analysis's details into what the panel shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..imageio import ImageLoadError, find_images, load_rgb
from .examples import hub_dataset_images
from .formatting import DISPLAY_MAX_SIDE, OOD_REFUSAL, TOP_K, label_key, pct
from .registry import ModelRegistry, ModelUnavailableError

logger = logging.getLogger(__name__)

CASES_DATASET_ENV = "CASES_DATASET"        # Hub dataset id[@rev] holding the indexed training images
CASE_THUMBNAIL_SIDE = 192                  # similar-case thumbnails in the gallery


class CaseImages:
    """The similar cases' pictures, found by image id (file stem) in a local folder or a Hub dataset.

    Built once at start-up; `note` says why there are none (no source given, offline, empty folder).
    """

    def __init__(self, paths: dict[str, Path] | None = None, *, source: str = "", note: str = "",
                 thumbnails: Any = None):
        self.paths = dict(paths or {})
        self.source = source
        self.note = note
        # The model folder's own small pictures (inference.case_thumbnails), used where `paths` has none.
        self.thumbnails = thumbnails

    def with_thumbnails(self, thumbnails: Any) -> CaseImages:
        """These pictures, falling back on a model folder's shipped thumbnails (None: unchanged)."""
        if thumbnails is None:
            return self
        source = f"{self.source} and the model folder's thumbnails" if self.paths else "the model folder's thumbnails"
        return CaseImages(self.paths, source=source, note=self.note, thumbnails=thumbnails)

    @property
    def available(self) -> bool:
        return bool(self.paths) or self.thumbnails is not None

    def has(self, image_id: str) -> bool:
        return image_id in self.paths or (self.thumbnails is not None and image_id in self.thumbnails)

    @classmethod
    def from_folder(cls, folder: str | Path) -> CaseImages:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"case images folder {folder} does not exist")
        paths = {p.stem: p for p in find_images(folder)}
        return cls(paths, source=str(folder), note="" if paths else f"no images in {folder}")

    @classmethod
    def from_hub(cls, dataset: str) -> CaseImages:
        """A Hub dataset of image files (cache first; offline and not cached: HubUnavailableError at once)."""
        return cls.from_folder(hub_dataset_images(dataset))

    @classmethod
    def unavailable(cls, note: str) -> CaseImages:
        return cls(note=note)

    def path(self, image_id: str) -> Path | None:
        return self.paths.get(image_id)

    def load(self, image_id: str, max_side: int) -> Image.Image | None:
        path = self.path(image_id)
        if path is None:
            return self.thumbnails.get(image_id) if self.thumbnails is not None else None
        try:
            image = load_rgb(path)
        except ImageLoadError:
            logger.warning("case image %s is unreadable", path)
            return None
        image.thumbnail((max_side, max_side))
        return image


@dataclass
class ExtrasView:
    """The parts of the result panel that follow from the OOD flag and the similar cases."""

    ood_status: str                   # one line: which check ran / that it is unavailable
    flagged: bool                     # demote the model's output (collapsed, relabelled)
    result_label: str
    cases_label: str
    cases_status: str                 # markdown: vote vs softmax, or why there are no cases
    gallery: list[tuple[Image.Image, str]]
    table: str                        # markdown table of the cases (always, images or not)


def case_caption(case: dict[str, Any]) -> str:
    confirmed = f", {case['dx_type']}" if case.get("dx_type") else ""
    source = f" · {case['source']}" if case.get("source") else ""
    return f"{label_key(case['label'])} · similarity {case['similarity']:.2f}{confirmed}{source}"


def cases_table_markdown(found: Sequence[dict[str, Any]]) -> str:
    rows = ["| # | image | confirmed diagnosis | confirmed by | similarity | lesion |", "|---|---|---|---|---|---|"]
    rows += [f"| {i} | `{c['image_id']}` | {label_key(c['label'])} | {c.get('dx_type') or '—'} | "
             f"{c['similarity']:.3f} | {c.get('lesion_id') or '—'} |" for i, c in enumerate(found, start=1)]
    return "\n".join(rows)


def vote_markdown(vote: dict[str, float], probs: dict[str, float]) -> str:
    order = sorted(vote, key=lambda c: (vote[c], probs.get(c, 0.0)), reverse=True)[:TOP_K]
    return ("**Retrieval vote** (diagnoses of the nearest confirmed lesions, weighted by similarity, every class "
            "counted as equally common, like the softmax): "
            + ", ".join(f"{label_key(c)} {pct(vote[c])}" for c in order)
            + ". **Calibrated softmax**: " + ", ".join(f"{label_key(c)} {pct(probs[c])}"
                                                       for c in sorted(probs, key=probs.get, reverse=True)[:TOP_K]))


def extras_view(details: dict[str, Any] | None, images: CaseImages | None) -> ExtrasView:
    """From `/predict`'s details JSON: whether to demote the result, and the similar-cases panel."""
    details = details or {}
    flagged = bool(details.get("out_of_distribution"))
    found = details.get("similar_cases")
    not_meaningful = " — not meaningful for this image" if flagged else ""
    if found is None:
        status = f"ℹ {details.get('cases_status') or 'Similar cases are unavailable for this model.'}"
        return ExtrasView(ood_status=f"ℹ {details.get('ood_check', '')}", flagged=flagged,
                          result_label=_result_label(flagged), cases_label=f"Similar confirmed cases{not_meaningful}",
                          cases_status=status, gallery=[], table="")
    gallery = []
    for case in found:
        thumb = images.load(case["image_id"], CASE_THUMBNAIL_SIDE) if images is not None else None
        if thumb is not None:
            gallery.append((thumb, case_caption(case)))
    if images is None or not images.available:
        why = images.note if images is not None and images.note else (
            "no case images were given (start the app with `--cases-images DIR` or set "
            f"`{CASES_DATASET_ENV}`)")
        pictures = f"Pictures unavailable: {why}; the table lists the cases."
    elif len(gallery) < len(found):
        pictures = f"{len(found) - len(gallery)} of the {len(found)} cases have no picture in `{images.source}`."
    else:
        pictures = "Click a case to see it large beside your image."
    lines = []
    if flagged:
        lines.append(f"⚠ {OOD_REFUSAL}: these are the least unlike training images, not similar lesions.")
    if details.get("retrieval_vote"):
        lines.append(vote_markdown(details["retrieval_vote"], details.get("probs", {})))
    lines.append(pictures)
    return ExtrasView(ood_status=f"ℹ {details.get('ood_check', '')}", flagged=flagged,
                      result_label=_result_label(flagged), cases_label=f"Similar confirmed cases{not_meaningful}",
                      cases_status="\n\n".join(lines), gallery=gallery, table=cases_table_markdown(found))


def extras_intro(registry: ModelRegistry, model_name: str | None, images: CaseImages | None) -> tuple[str, str]:
    """Before any analysis: (the OOD check line, the similar-cases line) for the default model."""
    if not model_name:
        return "", ""
    try:
        predictor = registry.get(model_name)
    except ModelUnavailableError:
        return "", ""
    pictures = ""
    if predictor.case_index is not None and predictor.case_index.thumbnails is None and (
            images is None or not images.available):
        pictures = " Pictures: " + ((images.note if images is not None and images.note else "")
                                    or f"none given (`--cases-images DIR` or `{CASES_DATASET_ENV}`)") + "."
    return (f"ℹ {predictor.ood_status}",
            f"ℹ {predictor.cases_status}{pictures} Analyze an image to see its nearest confirmed cases.")


def _result_label(flagged: bool) -> str:
    return ("Show the model's output anyway (classes, malignancy, CAM): not meaningful for this image"
            if flagged else "Model output")


def selected_case(details: dict[str, Any] | None, index: int | None, images: CaseImages | None
                  ) -> tuple[Image.Image | None, str]:
    """The clicked gallery item (index among the cases that have a picture) -> (large picture, caption)."""
    found = [c for c in (details or {}).get("similar_cases") or []
             if images is not None and images.has(c["image_id"])]
    if index is None or not 0 <= index < len(found):
        return None, ""
    case = found[index]
    picture = images.load(case["image_id"], DISPLAY_MAX_SIDE)
    return picture, (f"**{case['image_id']}** — confirmed {label_key(case['label'])}"
                     f"{' (' + case['dx_type'] + ')' if case.get('dx_type') else ''}, similarity "
                     f"{case['similarity']:.3f}, lesion {case.get('lesion_id') or 'unknown'}"
                     f"{', from ' + case['source'] if case.get('source') else ''}")


def pictures_for(registry: ModelRegistry, details: dict[str, Any] | None, images: CaseImages | None) -> CaseImages:
    """The pictures for one answer's cases: the app's `--cases-images` first, then the answering model's
    shipped thumbnails, so a Space shows pictures with no setup."""
    images = images if images is not None else CaseImages.unavailable("")
    name = (details or {}).get("model")
    try:
        predictor = registry.get(name) if name else None
    except ModelUnavailableError:
        predictor = None
    index = getattr(predictor, "case_index", None)
    return images.with_thumbnails(getattr(index, "thumbnails", None))


def case_images_from(folder: str | Path | None, dataset: str | None) -> CaseImages:
    """The app's case pictures: `--cases-images DIR`, else the Hub dataset; failures become a note."""
    if folder is not None:
        return CaseImages.from_folder(folder)
    if not dataset:
        return CaseImages.unavailable("")
    try:
        return CaseImages.from_hub(dataset)
    except Exception as err:  # noqa: BLE001 - the app runs without pictures and says why on the page
        logger.warning("case images dataset %s unavailable: %s", dataset, err)
        return CaseImages.unavailable(f"the case images dataset `{dataset}` is unavailable ({err})")
