"""Learning-rate schedules: exact first and last values, warmup, and re-warming off."""

from __future__ import annotations

import itertools
import math

import pytest

from cpt.api.training import Schedule
from cpt_pipeline.train.schedule import lr_multiplier, stable_end


def values(total: int, **cfg: object) -> list[float]:
    f = lr_multiplier(Schedule.model_validate(cfg), total)
    return [f(step) for step in range(total)]


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
@pytest.mark.parametrize("floor", ["0.0", "0.1"])
def test_decaying_schedules_end_at_min_lr_ratio_on_the_last_step(kind: str, floor: str) -> None:
    lrs = values(100, type=kind, warmupFraction="0.1", decayFraction="0.2", minLrRatio=floor)
    assert lrs[0] == pytest.approx(1 / 10) and lrs[9] == 1.0  # warmup reaches the peak on its last step
    assert lrs[-1] == pytest.approx(float(floor), abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # never rises after the warmup


def test_cosine_shape() -> None:
    lrs = values(11, type="cosine", warmupFraction="0", minLrRatio="0.0")
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == 0.0
    assert lrs[1] == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))


def test_wsd_is_stable_then_decays_linearly_to_the_floor() -> None:
    lrs = values(10, type="wsd", warmupFraction="0.2", decayFraction="0.4", minLrRatio="0.2")
    assert lrs[:2] == [0.5, 1.0] and lrs[2:6] == [1.0] * 4
    assert lrs[6:] == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_rewarm_off_starts_at_the_peak_and_constant_stays_there() -> None:
    assert values(10, type="cosine", rewarm=False, warmupFraction="0.5")[0] == 1.0
    assert values(10, type="constant", warmupFraction="0.2") == [0.5, 1.0] + [1.0] * 8


def test_a_single_step_trains_at_the_peak() -> None:
    assert values(1, type="cosine", warmupFraction="0", minLrRatio="0.0") == [1.0]


def segmented(ends: list[int], **cfg: object) -> list[float]:
    f = lr_multiplier(Schedule.model_validate(cfg), ends)
    return [f(step) for step in range(ends[-1])]


def test_a_grown_cosine_run_rewarms_and_decays_again_over_the_new_segment() -> None:
    """docs/training.md, extending a run: the first segment keeps its rates; the second re-warms over
    warmupFraction of its own steps and reaches the floor on the run's new last step."""
    cfg = {"type": "cosine", "warmupFraction": "0.1", "minLrRatio": "0.1"}
    lrs = segmented([40, 100], **cfg)
    assert lrs[:40] == values(40, **cfg)  # steps already taken keep their rate
    assert lrs[40:46] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])  # 6 = 10% of 60 steps
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(lrs[45:]))
    assert segmented([40, 100], **cfg, rewarm=False)[40] == 1.0


def test_a_grown_wsd_run_continues_its_stable_phase_and_decays_at_the_new_end() -> None:
    cfg = {"type": "wsd", "warmupFraction": "0.1", "decayFraction": "0.2", "minLrRatio": "0.0"}
    first, grown = values(50, **cfg), segmented([50, 100], **cfg)
    assert stable_end(Schedule.model_validate(cfg), 50) == 40 and first[39] == 1.0 > first[40]
    assert grown[:40] == first[:40]  # up to the kept pre-decay checkpoint: the same rates
    assert grown[40:80] == [1.0] * 40  # the stable phase goes on where the first segment decayed
    assert grown[80:] == pytest.approx([1 - i / 20 for i in range(1, 21)])  # 20% of 100 steps, to the floor


def test_segments_must_grow() -> None:
    with pytest.raises(ValueError, match="segment ends must increase"):
        lr_multiplier(Schedule.model_validate({"type": "cosine"}), [50, 50])
