"""Learning-rate schedules as multipliers of the peak rate, per optimizer step (0-based).

Step s trains with peak x f(s). Warmup climbs linearly to the peak on its last step; cosine and
warmup-stable-decay then fall to exactly `minLrRatio` on the run's last step (s = total - 1), so the
schedule ends where the spec says. With `rewarm: false` there is no warmup: the first step trains at the
peak rate.

A run whose budget grew (docs/training.md, "Extending a run") has segments: `ends` lists the step count at
the end of each budget, in order. The rule for the steps of each segment:
- cosine: every segment re-warms (warmupFraction of its own steps, unless rewarm is false) and decays to the
  floor on its own last step, as the reference study re-warms between its phases;
- wsd: one schedule over the whole run: the first segment's warmup, then the stable phase up to the last
  segment's decay, which takes decayFraction of the run's steps and ends on its last step. Training resumes
  from the checkpoint kept at the old decay's start (`stable_end`), so the stable phase continues and the
  decayed branch of the earlier segment is kept only in its export;
- constant: the peak throughout (after the first segment's warmup).
Earlier segments' steps keep the rate they trained with.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence

from cpt.api.training import Schedule


def _warmup(cfg: Schedule, steps: int) -> int:
    return round(float(cfg.warmup_fraction) * steps) if cfg.rewarm else 0


def stable_end(cfg: Schedule, total_steps: int) -> int:
    """WSD: the steps done when the decay starts (its checkpoint is kept, to continue the stable phase when the
    budget grows); the steps of other schedules."""
    total = max(1, total_steps)
    if cfg.type != "wsd":
        return total
    return total - max(1, round(float(cfg.decay_fraction) * total))


def _one_segment(cfg: Schedule, first: int, end: int, warmup: int, decay_total: int) -> Callable[[int], float]:
    """f(step) for steps first .. end - 1: warmup steps, then the schedule's shape down to the floor at end - 1."""
    last = end - 1
    floor = float(cfg.min_lr_ratio)
    decay = max(1, round(float(cfg.decay_fraction) * decay_total))

    def multiplier(step: int) -> float:
        local = step - first
        if local < warmup:
            return (local + 1) / warmup
        if cfg.type == "constant":
            return 1.0
        if cfg.type == "wsd":
            decay_start = end - decay  # steps decay_start .. last decay; the last one reaches the floor
            if step < decay_start:
                return 1.0
            return floor + (1 - floor) * max(0.0, 1 - (step - decay_start + 1) / decay)
        span = last - (first + warmup)  # cosine from the first step after warmup (peak) to the last (floor)
        if span <= 0:
            return 1.0
        progress = min(1.0, (local - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def lr_multiplier(cfg: Schedule, total_steps: int | Sequence[int]) -> Callable[[int], float]:
    """f(step) for LambdaLR over the run's steps: one total, or the step counts at the end of each segment."""
    ends = [max(1, total_steps)] if isinstance(total_steps, int) else [max(1, e) for e in total_steps]
    if any(b <= a for a, b in itertools.pairwise(ends)):
        raise ValueError(f"segment ends must increase, got {ends}")
    if cfg.type != "cosine":  # one schedule over the whole run, warmup from the first segment
        return _one_segment(cfg, 0, ends[-1], _warmup(cfg, ends[0]), ends[-1])
    starts = [0, *ends[:-1]]
    parts = [_one_segment(cfg, a, b, _warmup(cfg, b - a), b - a) for a, b in zip(starts, ends, strict=True)]

    def multiplier(step: int) -> float:
        return parts[min(len(parts) - 1, bisect.bisect_right(ends, step))](step)

    return multiplier
