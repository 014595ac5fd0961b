"""Small synthetic datasets in every layout the data layer reads, written into a test's tmp_path.

Images are tiny (`SIZE`) so a whole layout is written in milliseconds; labels pick the lesion colour.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from conftest import synthetic_lesion

SIZE = (40, 30)
HAM_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def write_image(path: Path, seed: int, label: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_lesion(seed, SIZE, label).save(path)
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def make_ham10000(root: Path, *, kaggle_parts: bool = True) -> dict:
    """12 images of 8 lesions (some with 2-3 images), every class present.

    kaggle_parts: images split over `HAM10000_images_part_1/` and `_part_2/` as on Kaggle; else one `images/`.
    """
    lesions = [("HAM_0000001", "nv", 3), ("HAM_0000002", "nv", 2), ("HAM_0000003", "mel", 2),
               ("HAM_0000004", "bkl", 1), ("HAM_0000005", "bcc", 1), ("HAM_0000006", "akiec", 1),
               ("HAM_0000007", "df", 1), ("HAM_0000008", "vasc", 1)]
    rows, n = [], 0
    for lesion_id, dx, count in lesions:
        for _ in range(count):
            image_id = f"ISIC_{n:07d}"
            folder = ("HAM10000_images_part_1" if n % 2 == 0 else "HAM10000_images_part_2") if kaggle_parts else "images"
            write_image(root / folder / f"{image_id}.jpg", seed=n, label=HAM_CODES.index(dx))
            age = "" if n == 0 else f"{40 + n}.0"  # the real metadata has empty ages
            rows.append(f"{lesion_id},{image_id},{dx},histo,{age},male,back")
            n += 1
    write_csv(root / "HAM10000_metadata.csv", "lesion_id,image_id,dx,dx_type,age,sex,localization", rows)
    return {"n_images": n, "n_groups": len(lesions),
            "classes": {"nv": 5, "mel": 2, "bkl": 1, "bcc": 1, "akiec": 1, "df": 1, "vasc": 1}}


ISIC2018_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
ISIC2019_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
ISIC2017_HEADER = "image_id,melanoma,seborrheic_keratosis"


def one_hot(header: str, image_id: str, column: str) -> str:
    cols = header.split(",")[1:]
    return ",".join([image_id, *("1.0" if c == column else "0.0" for c in cols)])


def make_isic2018(root: Path) -> list[str]:
    """One image per class column; returns the columns in row order."""
    cols = ISIC2018_HEADER.split(",")[1:]
    rows = []
    for i, col in enumerate(cols):
        write_image(root / "ISIC2018_Task3_Training_Input" / f"ISIC_{i:07d}.jpg", seed=i, label=i)
        rows.append(one_hot(ISIC2018_HEADER, f"ISIC_{i:07d}", col))
    write_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", ISIC2018_HEADER, rows)
    return cols


def make_isic2019(root: Path) -> list[str]:
    """One image per column including SCC and UNK (the UNK row has an image too)."""
    cols = ISIC2019_HEADER.split(",")[1:]
    rows = []
    for i, col in enumerate(cols):
        write_image(root / "ISIC_2019_Training_Input" / f"ISIC_{i:07d}.jpg", seed=i, label=i)
        rows.append(one_hot(ISIC2019_HEADER, f"ISIC_{i:07d}", col))
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_HEADER, rows)
    return cols


def make_isic2017(root: Path) -> dict[str, str]:
    """Two melanomas, one seborrhoeic keratosis, three nevi (both columns 0); returns id -> expected label."""
    spec = [("1.0", "0.0", "mel"), ("1.0", "0.0", "mel"), ("0.0", "1.0", "bkl"),
            ("0.0", "0.0", "nv"), ("0.0", "0.0", "nv"), ("0.0", "0.0", "nv")]
    rows, expected = [], {}
    for i, (mel, sk, label) in enumerate(spec):
        image_id = f"ISIC_{i:07d}"
        write_image(root / "images" / f"{image_id}.jpg", seed=i, label=i)
        rows.append(f"{image_id},{mel},{sk}")
        expected[image_id] = label
    write_csv(root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", ISIC2017_HEADER, rows)
    return expected


def make_imagefolder(root: Path) -> dict[str, int]:
    """PH2 reorganised per class: common_nevus 3, atypical_nevus 2, melanoma 2, plus a mask and a stray file."""
    counts = {"common_nevus": 3, "atypical_nevus": 2, "melanoma": 2}
    n = 0
    for cls, count in counts.items():
        for _ in range(count):
            write_image(root / cls / f"IMD{n:03d}.bmp", seed=n, label=n % 3)
            n += 1
    # A mask beside an image is not a sample; a text file is ignored and reported.
    write_image(root / "melanoma" / "IMD999_lesion.bmp", seed=99)
    (root / "melanoma" / "notes.txt").write_text("not an image")
    return counts


PH2_CODES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}


def make_ph2(root: Path) -> dict[str, str]:
    """PH2 as distributed: `PH2 Dataset images/IMDxxx/...` with masks, and `PH2_dataset.txt`."""
    cases = {"IMD002": "0", "IMD003": "0", "IMD004": "1", "IMD009": "1", "IMD058": "2"}
    lines = ["||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Colors ||"]
    for i, (case, code) in enumerate(cases.items()):
        base = root / "PH2 Dataset images" / case
        write_image(base / f"{case}_Dermoscopic_Image" / f"{case}.bmp", seed=i, label=int(code))
        write_image(base / f"{case}_lesion" / f"{case}_lesion.bmp", seed=100 + i)
        write_image(base / f"{case}_roi" / f"{case}_R1_Region.bmp", seed=200 + i)
        histology = "Melanoma" if code == "2" else ""
        lines.append(f"|| {case}   || {histology:22s} ||         {code}          ||     0     ||  3  4  ||")
    lines += ["", "Legend:", "Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma."]
    (root / "PH2_dataset.txt").write_text("\n".join(lines) + "\n")
    return {case: PH2_CODES[code] for case, code in cases.items()}


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels but holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path
