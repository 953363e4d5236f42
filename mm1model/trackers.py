"""What the trainer shows in the trackers users already run: TensorBoard event files per run.

Every run directory gets ``tensorboard/`` (rank 0 writes it): per step ``train/loss``,
``train/grad_norm``, ``train/tokens_per_s``, ``train/mfu`` (on GPUs), the scheduled LR of every
parameter group (``lr/<group>``: muP's groups run at their own multiples of the schedule), and per
evaluation ``val/loss`` and ``val/loss_<source>``. So ``tensorboard --logdir SWEEP_DIR`` shows every
cell of a sweep side by side, offline. ``metrics.jsonl`` stays the record the tools read; these
files are for looking. A resumed run purges the events after its checkpoint's step, as it
truncates ``metrics.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """Scalars of one run into ``RUN_DIR/tensorboard``; a no-op when ``enabled`` is False (other ranks)."""

    def __init__(self, run_dir: Path, resumed_at: int, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it is written

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resumed_at + 1,
                                        flush_secs=30)

    def step(self, row: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        if self.writer is None:
            return
        step = row["step"]
        for key in ("loss", "grad_norm", "tokens_per_s", "mfu"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], step)
        for i, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', i)}", group["lr"], step)

    def evaluation(self, step: int, loss: float, by_source: dict[str, float]) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("val/loss", loss, step)
        for source, value in by_source.items():
            self.writer.add_scalar(f"val/loss_{source}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
