"""Learning-rate schedules as multipliers of the peak rate, per optimizer step (0-based).

Step s trains with peak x f(s). Warmup climbs linearly to the peak on its last step; cosine and
warmup-stable-decay then fall to exactly `minLrRatio` on the run's last step (s = total - 1), so the
schedule ends where the spec says. With `rewarm: false` there is no warmup: the first step trains at the
peak rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cpt.api.training import Schedule


def lr_multiplier(cfg: Schedule, total_steps: int) -> Callable[[int], float]:
    """f(step) for LambdaLR: warmup (unless re-warming is off), then cosine, warmup-stable-decay or constant."""
    total = max(1, total_steps)
    last = total - 1
    warmup = round(float(cfg.warmup_fraction) * total) if cfg.rewarm else 0
    floor = float(cfg.min_lr_ratio)
    decay = max(1, round(float(cfg.decay_fraction) * total))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.type == "constant":
            return 1.0
        if cfg.type == "wsd":
            decay_start = total - decay  # steps decay_start .. last decay; the last one reaches the floor
            if step < decay_start:
                return 1.0
            return floor + (1 - floor) * max(0.0, 1 - (step - decay_start + 1) / decay)
        span = last - warmup  # cosine from the first step after warmup (peak) to the last step (floor)
        if span <= 0:
            return 1.0
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
