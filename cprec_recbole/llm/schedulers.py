"""Learning-rate schedules as multipliers of the peak rate, keyed by optimizer step.

``phases`` maps phase names to their end step (exclusive), always with ``total``; a schedule reads
the boundaries it needs (``warmup`` for warm-up + cosine). Register more with
``register_schedulers``; CPRec's Warmup-Stable-Annealing reads its phases from the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    """Linear warm-up to the peak, then cosine down to ``min_lr_ratio`` of it (LLaRA's)."""
    total, warmup = max(int(phases["total"]), 1), int(phases.get("warmup", 0))
    floor = float(config.get("min_lr_ratio", 0.0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, phases: Mapping[str, int], config: Mapping) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)
