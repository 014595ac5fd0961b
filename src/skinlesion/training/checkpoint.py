"""Training checkpoints that survive a SIGKILL at any instant.

Each checkpoint is a fresh folder `checkpoints/step-XXXXXXXX/` holding `model.safetensors`,
`ema.safetensors` and `state.pt` (optimiser, scheduler, RNG, position, history; read back with
`weights_only=True`, so nothing is unpickled). Only after the folder is complete does an atomic
rename of `checkpoints/LATEST` point at it, so a half-written checkpoint can never be the latest.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "LATEST"
KEEP = 2


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [np_state[2], np_state[3], float(np_state[4])],
        "python": list(_flatten(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten(state: tuple) -> list:
    version, internal, gauss = state
    return [version, *internal, -1 if gauss is None else gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]), meta[2]))
    flat = state["python"]
    gauss = None if flat[-1] == -1 else flat[-1]
    random.setstate((flat[0], tuple(int(v) for v in flat[1:-1]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _is_complete(folder: Path) -> bool:
    return (folder / "state.pt").is_file() and (folder / "model.safetensors").is_file()


def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, ema: torch.nn.Module | None,
                    state: dict[str, Any]) -> Path:
    """Write a complete checkpoint folder, then commit it by pointing `LATEST` at it.

    The folder is never overwritten in place: saving the same `step` twice (a mid-epoch checkpoint at
    an epoch's last batch, then the end-of-epoch one) gets a new name, so a kill at any instant
    leaves `LATEST` pointing at a complete folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name, n = f"step-{step:08d}", 1
    while (root / name).exists():
        name, n = f"step-{step:08d}-{n}", n + 1
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incomplete-"))
    save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_state_dict_cpu(ema), str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    os.replace(tmp, final)
    pointer_tmp = root / f".{LATEST}.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / LATEST)  # the commit point
    for old in _complete_checkpoints(root)[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".incomplete-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first (names sort in training order)."""
    return sorted(p for p in root.glob("step-*") if p.is_dir() and _is_complete(p))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder `LATEST` names when it is complete; else the newest complete `step-*` folder; else None.

    `.incomplete-*` folders (a save killed half-way) are never returned. A `step-*` folder only ever
    appears by an atomic rename of a finished folder, so falling back to one is safe.
    """
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        path = root / name
        if name.startswith("step-") and "/" not in name and _is_complete(path):
            return path
    complete = _complete_checkpoints(root) if root.is_dir() else []
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module | None) -> dict[str, Any]:
    path = Path(path)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if ema is not None:
        ema_file = path / "ema.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"{path}: checkpoint has no EMA weights but --ema is on")
        ema.load_state_dict(load_file(str(ema_file)))
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
