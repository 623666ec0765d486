"""Learning-rate schedule for fine-tuning: linear warmup, then cosine decay to a floor.

sam2's own training recipe warms the learning rate up and decays it with a cosine. Here
progress is counted in optimizer steps and, when the run has a time budget, in seconds
too, whichever is further along: a run stopped by its budget still ends at the low
learning rate instead of being cut off at the peak.
"""

from __future__ import annotations

import math
import time

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, progress: float, min_ratio: float) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based), given ``progress`` in [0, 1]."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None,
                  min_ratio: float = 0.05, max_seconds: float | None = None,
                  clock=time.monotonic) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR: ``warmup_steps`` of linear warmup, then a cosine from the peak to ``min_ratio`` of it.

    The cosine runs over the steps after the warmup up to ``total_steps`` or, with
    ``max_seconds``, over the time budget counted from this call, whichever ends first.
    With neither, the learning rate stays at its peak after the warmup. Call ``step()``
    after each ``optimizer.step()``.
    """
    if warmup_steps < 0 or (total_steps is not None and total_steps < 1):
        raise ValueError(f"warmup_steps must be >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio}")
    started = clock()

    def factor(step: int) -> float:
        parts = []
        if total_steps is not None:
            parts.append((step - warmup_steps) / max(1, total_steps - warmup_steps))
        if max_seconds:
            parts.append((clock() - started) / max_seconds)
        if not parts:
            return warmup_cosine_factor(step, warmup_steps, 0.0, 1.0)
        return warmup_cosine_factor(step, warmup_steps, max(parts), min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
