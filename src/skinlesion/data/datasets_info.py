"""What every public dataset we train or test on is, whose it is, and how to cite it: one place, used by the
model card (`models/card.py`) and the README tooling (`scripts/readme_results.py`).

Keyed by source name or layout (`sources.load_sources` names a source after its layout unless told otherwise).
A source we know nothing about is rendered as such, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    key: str             # source name / layout it is found under
    title: str           # how the card names it
    tag: str             # its name in the card's `datasets:` front matter (no official Hub id exists)
    origin: str          # where the images come from (which clinics)
    licence: str         # as the dataset states it
    licence_id: str      # the Hub's licence id for a model trained on it ("other" when none fits)
    citation: str        # one line, for prose
    bibtex: str
    url: str


HAM10000 = DatasetInfo(
    key="ham10000",
    title="HAM10000",
    tag="HAM10000",
    origin=("two clinics: the ViDIR Group, Department of Dermatology, Medical University of Vienna (Austria), and "
            "Cliff Rosendahl's skin cancer practice in Queensland (Australia); mostly fair-skinned patients"),
    licence="CC BY-NC-SA 4.0",
    licence_id="cc-by-nc-sa-4.0",
    citation=("Tschandl, Rosendahl, Kittler, \"The HAM10000 dataset, a large collection of multi-source dermatoscopic "
              "images of common pigmented skin lesions\", *Sci Data* 5, 180161 (2018), doi:10.1038/sdata.2018.161"),
    bibtex="""@article{tschandl2018ham10000,
  title   = {The {HAM10000} dataset, a large collection of multi-source dermatoscopic images of common pigmented skin lesions},
  author  = {Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal = {Scientific Data},
  volume  = {5},
  pages   = {180161},
  year    = {2018},
  doi     = {10.1038/sdata.2018.161}
}""",
    url="https://doi.org/10.7910/DVN/DBW86T",
)

ISIC2017 = DatasetInfo(
    key="isic2017",
    title="ISIC 2017",
    tag="ISIC-2017",
    origin="several institutions contributing to the ISIC Archive (not the two HAM10000 clinics)",
    licence="ISIC Archive terms (the challenge data: CC BY-NC)",
    licence_id="cc-by-nc-4.0",
    citation=("Codella et al., \"Skin lesion analysis toward melanoma detection: a challenge at the 2017 International "
              "Symposium on Biomedical Imaging (ISBI), hosted by the International Skin Imaging Collaboration (ISIC)\", "
              "arXiv:1710.05006"),
    bibtex="""@misc{codella2017isic,
  title         = {Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 International Symposium on
                   Biomedical Imaging ({ISBI}), Hosted by the International Skin Imaging Collaboration ({ISIC})},
  author        = {Codella, Noel C. F. and others},
  year          = {2017},
  eprint        = {1710.05006},
  archivePrefix = {arXiv}
}""",
    url="https://challenge.isic-archive.com/data/#2017",
)

KNOWN = {info.key: info for info in (HAM10000, ISIC2017)}
# Hub licence ids from the most restrictive down: a model carries the most restrictive terms of its data.
LICENCE_ORDER = ("cc-by-nc-sa-4.0", "cc-by-nc-4.0")


def dataset_info(source: dict | str) -> DatasetInfo | None:
    """Facts for a source record (`{"name", "layout", ...}`) or a name/layout; None when unknown."""
    if isinstance(source, str):
        return KNOWN.get(source.lower())
    for key in (source.get("name"), source.get("layout")):
        if key and str(key).lower() in KNOWN:
            return KNOWN[str(key).lower()]
    return None


def model_licence(sources: list[dict]) -> str:
    """The Hub licence id a model trained on `sources` carries: the most restrictive of theirs; 'other' when a
    source's terms are unknown (the card then says to check them)."""
    ids = []
    for source in sources:
        info = dataset_info(source)
        if info is None:
            return "other"
        ids.append(info.licence_id)
    for licence in LICENCE_ORDER:
        if licence in ids:
            return licence
    return "other"
