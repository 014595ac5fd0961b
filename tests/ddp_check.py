"""Run under `torchrun --nproc_per_node 2 tests/ddp_check.py DATA OUT REPORTS` (used by test_ddp.py).

Part 1 builds the loaders and the step exactly as `train()` does (make_accelerator, prepare_split,
build_datasets, make_loader, build_step_state, train_step) and records, per rank: the world size,
the dataset indices this rank drew in one epoch, and a checksum of the parameters after two steps.
Part 2 runs the real `train(cfg)` with an audit hook that records, on each rank, every
file-system write (open for writing, mkdir, rename, remove) under the output folder.
Each rank writes REPORTS/rank<N>.json; the test compares them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_training import tiny_config  # noqa: E402

from skinlesion.training import loop as training  # noqa: E402


class WithIndex(Dataset):
    """The training dataset, also returning each sample's index (sampler and sharding unchanged)."""

    def __init__(self, base):
        self.base, self.targets, self.class_to_idx = base, base.targets, base.class_to_idx

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, y, index


def param_checksum(model: torch.nn.Module) -> str:
    """Of the parameters only: BatchNorm running statistics are per-rank between DDP's buffer broadcasts."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def shard_and_sync(cfg, report: dict) -> None:
    accelerator = training.make_accelerator(cfg)
    report["world_size"] = accelerator.num_processes
    report["rank"] = accelerator.process_index
    report["distributed_type"] = str(accelerator.distributed_type)
    split = training.prepare_split(cfg, is_main=accelerator.is_main_process)
    train_ds, val_ds = training.build_datasets(cfg, split, training.preprocessing_of(cfg), progress=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    state, train_loader, _, _ = training.build_step_state(
        cfg, split.classes, train_ds.targets, accelerator,
        training.make_loader(WithIndex(train_ds), cfg, train=True, generator=generator),
        training.make_loader(val_ds, cfg, train=False, generator=None))
    report["checksum_before"] = param_checksum(accelerator.unwrap_model(state.model))
    indices, steps = [], 0
    generator.manual_seed(cfg.seed * 1000)
    for x, y, idx in train_loader:
        indices += idx.tolist()
        if steps < 2:
            training.train_step(state, x, y)
            steps += 1
    report["indices"] = indices
    report["n_train"] = len(train_ds)
    report["checksum_after"] = param_checksum(accelerator.unwrap_model(state.model))
    accelerator.wait_for_everyone()


def audit_writes(out: Path, sink: list[str]) -> None:
    root = str(out.resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            text = os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else p
            if isinstance(text, str) and os.path.abspath(text).startswith(root):
                sink.append(f"{event} {text}")

    sys.addaudithook(hook)


def main() -> None:
    data, out, reports = (Path(a) for a in sys.argv[1:4])
    cfg = tiny_config(data, out, epochs=1, batch_size=4)
    report: dict = {}
    shard_and_sync(cfg, report)
    writes: list[str] = []
    audit_writes(out, writes)  # on every rank: rank 0's own writes show the hook works
    summary = training.train(cfg)
    report["train_num_processes"] = summary["num_processes"]
    report["writes_under_output"] = writes
    (reports / f"rank{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
