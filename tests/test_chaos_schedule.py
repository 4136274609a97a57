"""The chaos run's schedule (tests/e2e/chaos.py): a pure function of its seed, so a failing seed replays."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.chaos import EVALUATION, PREPROCESS, REQUIRED, TRAINING, schedule


@pytest.mark.parametrize("seed", [1, 7, 4242, 999_983])
def test_a_seed_gives_one_schedule_of_at_least_ten_faults_over_every_phase(seed: int) -> None:
    faults = schedule(seed, 5, 20)
    assert faults == schedule(seed, 5, 20)  # the same seed replays the same schedule
    assert len(faults) >= 10
    assert not Counter(REQUIRED) - Counter(f.kind for f in faults), faults  # every required kind is there
    phases = [f.phase for f in faults]
    assert phases == sorted(phases, key=[PREPROCESS, TRAINING, EVALUATION].index), phases
    steps = [f.step for f in faults if f.phase == TRAINING]
    assert steps == sorted(set(steps)) and all(5 <= s <= 20 for s in steps), steps
    # a phase's pod kill comes first in it: its window (a stage pod running) is the shortest
    assert faults[0].kind == "preprocess-kill"
    assert next(f for f in faults if f.phase == EVALUATION).kind == "eval-kill"


def test_different_seeds_give_different_schedules() -> None:
    assert len({tuple(schedule(seed, 5, 20)) for seed in range(20)}) > 10
