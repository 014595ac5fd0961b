"""The HAM10000 diagnostic classes: one place for codes, names, descriptions and malignancy.

Every label shown to a user goes through `describe_label`, so a model trained on another taxonomy
(PH2's three classes, a folder-per-class set) still shows its own names instead of a KeyError.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionClass:
    code: str
    name: str
    description: str
    malignant: bool


HAM10000_CLASSES: tuple[LesionClass, ...] = (
    LesionClass("akiec", "Actinic keratosis / intraepithelial carcinoma",
                "Sun-induced scaly precancer or early (in situ) squamous cell carcinoma.", True),
    LesionClass("bcc", "Basal cell carcinoma",
                "The most common skin cancer; grows slowly and rarely spreads.", True),
    LesionClass("bkl", "Benign keratosis-like lesion",
                "Seborrhoeic keratosis, solar lentigo or lichen-planus-like keratosis; harmless.", False),
    LesionClass("df", "Dermatofibroma",
                "A firm benign nodule of the skin's fibrous tissue.", False),
    LesionClass("mel", "Melanoma",
                "Cancer of pigment cells; the most dangerous skin cancer, curable when caught early.", True),
    LesionClass("nv", "Melanocytic nevus",
                "A common mole: a benign cluster of pigment cells.", False),
    LesionClass("vasc", "Vascular lesion",
                "Benign blood-vessel lesions such as angiomas, angiokeratomas and haemorrhages.", False),
)
HAM10000_CODES: tuple[str, ...] = tuple(c.code for c in HAM10000_CLASSES)
_BY_CODE = {c.code: c for c in HAM10000_CLASSES}

MALIGNANT_CODES: frozenset[str] = frozenset(c.code for c in HAM10000_CLASSES if c.malignant)

# Spellings used by other releases (ISIC 2018/2019 columns, PH2, folder names users pick).
ALIASES: dict[str, str] = {
    "ak": "akiec", "akiec": "akiec", "actinic_keratosis": "akiec", "scc": "akiec",
    "squamous_cell_carcinoma": "akiec",
    "bcc": "bcc", "basal_cell_carcinoma": "bcc",
    "bkl": "bkl", "seborrheic_keratosis": "bkl", "benign_keratosis": "bkl",
    "df": "df", "dermatofibroma": "df",
    "mel": "mel", "melanoma": "mel",
    "nv": "nv", "nevus": "nv", "naevus": "nv", "common_nevus": "nv", "atypical_nevus": "nv",
    "vasc": "vasc", "vascular_lesion": "vasc",
}


def lookup(code: str) -> LesionClass | None:
    """The HAM10000 class for `code` (case-insensitive), or None for a label outside the taxonomy."""
    return _BY_CODE.get(code.strip().lower())


def describe_label(label: str) -> LesionClass:
    """Known codes get their full name; unknown labels (PH2 'atypical_nevus', a user's folder) keep theirs."""
    known = lookup(label)
    if known is not None:
        return known
    pretty = label.replace("_", " ").strip().capitalize()
    # Malignancy follows the known spelling ('basal_cell_carcinoma' -> bcc, 'scc' -> akiec) so a model
    # trained on folder names still counts its cancers as malignant.
    alias = ALIASES.get(label.strip().lower().replace(" ", "_").replace("-", "_"))
    return LesionClass(label, pretty, "", malignant=alias in MALIGNANT_CODES)


def malignant_indices(label_names: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of the classes counted as malignant (mel + bcc + akiec) among a model's labels."""
    return [i for i, name in enumerate(label_names) if describe_label(name).malignant]


def parse_label_map(spec: str | None) -> dict[str, str]:
    """'common_nevus=nv,melanoma=mel' -> {'common_nevus': 'nv', 'melanoma': 'mel'}."""
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"label map entry {item!r} is not SRC=DST (e.g. 'melanoma=mel')")
        src, dst = (s.strip() for s in item.split("=", 1))
        if not src or not dst:
            raise ValueError(f"label map entry {item!r} has an empty side")
        mapping[src] = dst
    return mapping
