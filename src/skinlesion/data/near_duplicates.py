"""Near-duplicate photographs across and within data sources, found by image content.

Public dermoscopy sets overlap: one photograph reappears resized, squashed to a square, re-encoded, or under
another id (ISIC 2019 holds all of HAM10000; ISIC 2017's official splits share a few photographs). Ids cannot
find those, so each image gets a perceptual hash (imagehash's DCT hash, `phash`, on a square greyscale
thumbnail: squashing to a square first makes it blind to aspect changes, the low DCT frequencies to resizing
and JPEG noise) and pairs closer than a Hamming threshold are duplicates.

Dermoscopy is a brown blob on skin, so short hashes collide between different lesions: the hash is 256 bits
(hash_size 16). On HAM10000 + ISIC 2017 (docs/data.md) resized, squashed and re-encoded copies lie within 4 bits,
other photographs of one lesion and ISIC's colour-reprocessed copies of a photograph at 8-42, and unrelated
images mostly beyond 56 with a thin tail down to ~34. The default, 40, takes nearly all of the first two: a
false pair costs one training image or merges two groups, a missed one leaks a test image into training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

HASH_SIZE = 16              # 16 x 16 = 256-bit hash
DEFAULT_MAX_DISTANCE = 40   # Hamming distance (of 256 bits) at or below which two images are one photograph
_CHUNK = 2048               # rows per block of the all-pairs distance matrix (2048 x N float32)


def image_hash_of(image: Image.Image, hash_size: int = HASH_SIZE) -> np.ndarray:
    """(hash_size**2,) bool perceptual hash of a picture."""
    import imagehash

    side = hash_size * 4  # imagehash's own resize for phash; squashing to a square here is the point
    square = image.convert("L").resize((side, side), resample=Image.Resampling.BICUBIC)  # stable under JPEG noise
    return np.asarray(imagehash.phash(square, hash_size=hash_size).hash, dtype=bool).reshape(-1)


def image_hash(path: str, hash_size: int = HASH_SIZE) -> np.ndarray:
    """The hash of an image file; raises the loader's error naming an unreadable file."""
    from ..imageio import load_rgb

    return image_hash_of(load_rgb(path), hash_size)


def image_hashes(paths: Iterable[str], hash_size: int = HASH_SIZE, progress: bool = False) -> np.ndarray:
    """(N, hash_size**2) bool hashes, one row per path in order."""
    paths = list(paths)
    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="hashing images", unit="img")
    return np.stack([image_hash(p, hash_size) for p in iterator]) if paths else np.zeros((0, hash_size ** 2), bool)


def close_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j whose Hamming distance is <= max_distance.

    Hamming distance of bit vectors a, b = |a| + |b| - 2 a.b, so the all-pairs matrix is one matmul per block.
    """
    bits = hashes.astype(np.float32)                    # (N, B)
    ones = bits.sum(axis=1)                             # (N,)
    out = []
    for start in range(0, len(bits), _CHUNK):
        block = bits[start:start + _CHUNK]              # (C, B)
        dist = ones[start:start + _CHUNK, None] + ones[None, :] - 2.0 * (block @ bits.T)  # (C, N)
        rows, cols = np.nonzero(dist <= max_distance + 0.5)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                out.append((i, c, int(round(float(dist[r, c])))))
    return out


@dataclass(frozen=True)
class DuplicateScreen:
    """Pairs of image ids showing one photograph, with their Hamming distance."""

    pairs: pd.DataFrame  # columns image_a, image_b, distance, source_a, source_b

    def as_id_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.pairs["image_a"], self.pairs["image_b"], strict=True))

    def describe(self) -> dict:
        kinds = ["within " + a if a == b else " / ".join(sorted((a, b)))
                 for a, b in zip(self.pairs["source_a"], self.pairs["source_b"], strict=True)]
        counts = pd.Series(kinds, dtype=object).value_counts().sort_index()
        return {"n_pairs": int(len(self.pairs)), "by_sources": {k: int(v) for k, v in counts.items()},
                "pairs": self.pairs.head(50).to_dict("records")}


def screen(frame: pd.DataFrame, *, max_distance: int = DEFAULT_MAX_DISTANCE, progress: bool = False,
           hashes: np.ndarray | None = None) -> DuplicateScreen:
    """Near-duplicate pairs among the rows of a table (`image_id`, `path`, optional `source`)."""
    if hashes is None:
        hashes = image_hashes(frame["path"].tolist(), progress=progress)
    ids = frame["image_id"].astype(str).to_numpy()
    sources = (frame["source"] if "source" in frame.columns else pd.Series([""] * len(frame))).astype(str).to_numpy()
    rows = [{"image_a": ids[i], "image_b": ids[j], "distance": d, "source_a": sources[i], "source_b": sources[j]}
            for i, j, d in close_pairs(hashes, max_distance)]
    pairs = pd.DataFrame(rows, columns=["image_a", "image_b", "distance", "source_a", "source_b"])
    return DuplicateScreen(pairs=pairs.sort_values(["distance", "image_a", "image_b"]).reset_index(drop=True))


def training_leaks(split_of: dict[str, str], pairs: list[tuple[str, str]]) -> set[str]:
    """Training images that duplicate an image of any other split (val, test or a held-out set named 'holdout')."""
    leaks = set()
    for a, b in pairs:
        sa, sb = split_of.get(a), split_of.get(b)
        if sa == "train" and sb not in (None, "train"):
            leaks.add(a)
        if sb == "train" and sa not in (None, "train"):
            leaks.add(b)
    return leaks
