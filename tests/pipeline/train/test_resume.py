"""What a resume must keep: the recorded plan against the current spec."""

from __future__ import annotations

import pytest

from cpt.api import ContinuedPretrain
from cpt_pipeline.train.resume import (
    SEGMENTS_KEY,
    TOTAL_KEY,
    ResumeMismatch,
    check_resume,
    extends,
    resume_plan,
)


def spec(**training: object):
    doc = {
        "spec": {
            "model": {"uri": "org/model"},
            "data": {"sources": [{"name": "d", "uri": "/data"}], "sequenceLength": 64, "tokenBudget": 10**6},
            "training": {"microBatchSize": 4, "gradAccumulation": 2, **training},
            "storage": {"uri": "/out"},
        }
    }
    return ContinuedPretrain.model_validate(doc).spec


def test_an_unchanged_spec_resumes() -> None:
    check_resume(resume_plan(spec(), 2, [100], 3, {}), resume_plan(spec(), 2, [100], 3, {}), "step-00000010")
    check_resume(None, resume_plan(spec(), 2, [100], 3, {}), "step-00000010")  # a checkpoint from before plans


@pytest.mark.parametrize(
    ("change", "world", "words"),
    [
        ({"microBatchSize": 8}, 2, "spec.training.microBatchSize was 4, is 8"),
        ({"gradAccumulation": 1}, 2, "spec.training.gradAccumulation was 2, is 1"),
        ({}, 4, "spec.training.nodes * spec.training.procsPerNode was 2, is 4"),
        ({"schedule": {"type": "wsd"}}, 2, "spec.training.schedule was"),
        ({"seed": 7}, 2, "spec.training.seed was 42, is 7"),
    ],
)
def test_a_change_to_the_data_order_or_the_schedule_is_refused(change: dict, world: int, words: str) -> None:
    with pytest.raises(ResumeMismatch, match="cannot resume from checkpoint step-00000010") as error:
        check_resume(
            resume_plan(spec(), 2, [100], 3, {}), resume_plan(spec(**change), world, [100], 3, {}), "step-00000010"
        )
    assert words in str(error.value)


def test_the_learning_rate_and_the_checkpoint_interval_may_change() -> None:
    changed = spec(optimizer={"lr": "3e-4"}, checkpoint={"intervalSteps": 7})
    check_resume(resume_plan(spec(), 2, [100], 3, {}), resume_plan(changed, 2, [100], 3, {}), "step-00000010")


def test_a_checkpoint_written_under_another_zero_stage_is_refused() -> None:
    """Its partitions are laid out by the stage, so loading them under another would fail or mislead."""
    with pytest.raises(ResumeMismatch, match=r"zeroStage \(the stage used\) was 3, is 0"):
        check_resume(resume_plan(spec(), 2, [100], 3, {}), resume_plan(spec(), 2, [100], 0, {}), "step-00000010")


def test_a_grown_budget_extends_the_segments_and_a_smaller_one_is_refused() -> None:
    """docs/training.md, "Extending a run": a new segment after the recorded ones resumes (also from a plan
    recorded before segments, as a total); a budget below the recorded one does not."""
    first = resume_plan(spec(), 2, [100], 3, {"domain": {"sources": {}}})
    grown = resume_plan(spec(), 2, [100, 250], 3, {"domain": {"sources": {}}, "domain-segment-01": {"sources": {}}})
    check_resume(first, grown, "step-00000100")
    older = {**{k: v for k, v in first.items() if k != SEGMENTS_KEY}, TOTAL_KEY: 100}
    check_resume(older, grown, "step-00000100")
    assert extends(older, grown) and not extends(grown, grown)
    with pytest.raises(ResumeMismatch, match=r"segments \(steps at the end of each .*\) was \[100, 250\], is \[100\]"):
        check_resume(grown, first, "step-00000200")
    with pytest.raises(ResumeMismatch, match=r"was \[100\], is \[120, 250\]"):
        check_resume(first, resume_plan(spec(), 2, [120, 250], 3, {}), "step-00000100")
