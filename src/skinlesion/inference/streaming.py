"""Image files into model-sized batches, decoded beside the forward (`skinlesion predict`, evaluate.py, fit-features).

DataLoader worker processes decode each file (`imageio.load_rgb`) and cut the model's crop with the
Predictor's own `geometry` (the eval transform's resize and crop, uint8), so the main process's threads
stay with the forward while the next batch is decoded. Each batch reaches the main process as one uint8
tensor (a quarter of the float's bytes) and becomes the model input in one call (`Predictor.model_input`),
bit for bit what `Predictor.predict` makes of each file alone.

An unreadable file does not stop the stream: its error travels in the batch, and the caller decides
(stop naming it, or record it with `--skip-bad`). With `workers=0` everything runs in this process.
On 2 cores one worker beside torch's 2 threads was fastest (docs/speed.md: "Inference variants").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..imageio import ImageLoadError, load_rgb

DEFAULT_WORKERS = 1


@dataclass
class CropBatch:
    indices: list[int]                  # positions in the source list of the rows of `crops`
    crops: torch.Tensor                 # (B, 3, S, S) uint8; B = 0 when every file of the batch failed
    errors: dict[int, ImageLoadError] = field(default_factory=dict)  # position -> why it could not be read


class ImageCrops(Dataset):
    """Files -> (position, uint8 (3, S, S) crop or the ImageLoadError that stopped it)."""

    def __init__(self, sources: Sequence[str | Path], geometry: Callable[[Image.Image], torch.Tensor]):
        self.sources = list(sources)
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | ImageLoadError]:
        try:
            return index, self.geometry(load_rgb(self.sources[index]))
        except ImageLoadError as err:
            return index, err  # returned, not raised: one bad file must not end a folder's run


def collate_crops(items: list[tuple[int, torch.Tensor | ImageLoadError]]) -> CropBatch:
    good = [(i, crop) for i, crop in items if isinstance(crop, torch.Tensor)]
    errors = {i: err for i, err in items if not isinstance(err, torch.Tensor)}
    crops = torch.stack([crop for _, crop in good]) if good else torch.empty(0, dtype=torch.uint8)
    return CropBatch(indices=[i for i, _ in good], crops=crops, errors=errors)


def crop_batches(sources: Sequence[str | Path], geometry: Callable[[Image.Image], torch.Tensor], *,
                 batch_size: int, workers: int = DEFAULT_WORKERS) -> Iterator[CropBatch]:
    """Batches of crops in source order; `workers` processes decode ahead (two batches each)."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be at least 1 and workers at least 0, got {batch_size} and {workers}")
    loader = DataLoader(ImageCrops(sources, geometry), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_crops, persistent_workers=False)
    yield from loader
