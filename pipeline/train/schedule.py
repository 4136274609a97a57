"""Learning-rate schedules as multipliers of the peak rate, per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from cpt.api.training import Schedule


def lr_multiplier(cfg: Schedule, total_steps: int) -> Callable[[int], float]:
    """f(step) for LambdaLR: warmup (unless re-warming is off), then cosine, warmup-stable-decay or constant."""
    total = max(1, total_steps)
    warmup = round(float(cfg.warmup_fraction) * total) if cfg.rewarm else 0
    floor = float(cfg.min_lr_ratio)
    decay = max(1, round(float(cfg.decay_fraction) * total))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.type == "constant":
            return 1.0
        if cfg.type == "wsd":
            decay_start = total - decay
            if step < decay_start:
                return 1.0
            return floor + (1 - floor) * max(0.0, 1 - (step - decay_start) / decay)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
