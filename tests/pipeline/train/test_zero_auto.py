"""zeroStage auto: the lowest stage whose memory estimate fits, the offload constraints, and the estimate itself."""

from __future__ import annotations

import pytest

from cpt.api.training import DeepSpeed
from cpt_pipeline.train.zero_auto import Footprint, ModelShape, allowed_stages, choose_stage

GIB = 2**30
MOBILELLM = ModelShape(params=125_000_000, layers=30, hidden=576, vocab=32000)
STORIES = ModelShape(params=260_000, layers=5, hidden=64, vocab=512)


def test_a_tiny_model_on_a_laptop_gets_stage_0() -> None:
    stage, why = choose_stage(Footprint(DeepSpeed(), STORIES, "fp32", 8, 256, 1), 8 * GIB)
    assert stage == 0
    assert "stage 0" in why and "8.00 GiB" in why


def test_the_stage_rises_as_the_device_shrinks() -> None:
    ds = DeepSpeed(gradientCheckpointing=True)
    needs = {s: Footprint(ds, MOBILELLM, "bf16", 8, 2048, 8).bytes(s) for s in range(4)}
    assert needs[0] > needs[1] > needs[2] > needs[3]  # each stage partitions more
    for expected in range(4):
        stage, _ = choose_stage(Footprint(ds, MOBILELLM, "bf16", 8, 2048, 8), needs[expected])
        assert stage == expected


def test_with_no_stage_that_fits_the_highest_is_chosen_and_said() -> None:
    stage, why = choose_stage(Footprint(DeepSpeed(), MOBILELLM, "bf16", 80, 2048, 1), 1 * GIB)
    assert stage == 3
    assert "none fits" in why


def test_offload_settings_limit_the_stages() -> None:
    assert allowed_stages(DeepSpeed(offloadParams="cpu", offloadOptimizer="cpu")) == [3]
    assert allowed_stages(DeepSpeed(offloadOptimizer="cpu")) == [1, 2, 3]
    stage, _ = choose_stage(Footprint(DeepSpeed(offloadOptimizer="cpu"), STORIES, "fp32", 8, 256, 1), 64 * GIB)
    assert stage == 1


@pytest.mark.parametrize(("checkpointing", "bigger"), [(False, True), (True, False)])
def test_activations_count_and_checkpointing_shrinks_them(checkpointing: bool, bigger: bool) -> None:
    ds = DeepSpeed(gradientCheckpointing=checkpointing)
    small = Footprint(ds, MOBILELLM, "bf16", 1, 2048, 8).bytes(3)
    large = Footprint(ds, MOBILELLM, "bf16", 16, 2048, 8).bytes(3)
    plain = Footprint(DeepSpeed(gradientCheckpointing=False), MOBILELLM, "bf16", 16, 2048, 8).bytes(3)
    assert large > small
    assert (plain > large) is not bigger


def test_the_estimate_matches_the_zero_paper_accounting() -> None:
    """Mixed precision, stage 0: 2 + 2 + 12 = 16 bytes per parameter (ZeRO paper, section 3.1), plus activations."""
    shape = ModelShape(params=10**9, layers=1, hidden=1, vocab=1)
    estimate = Footprint(DeepSpeed(gradientCheckpointing=False), shape, "bf16", 1, 1, 1).bytes(0)
    assert estimate == pytest.approx(1.2 * 16 * 10**9, rel=1e-6)
    stage3 = Footprint(DeepSpeed(gradientCheckpointing=False), shape, "bf16", 1, 1, 64).bytes(3)
    assert stage3 == pytest.approx(1.2 * 16 * 10**9 / 64, rel=1e-3)
