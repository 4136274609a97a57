"""Resume safety: the settings that fix the data order and the learning rate, recorded with each checkpoint.

Sample k of step s is a pure function of the step, the batch shape, the world size, the seed and the
replay fraction; the LR of step s depends on the schedule and the number of steps. A checkpoint resumed
under different values would silently remap samples and the LR, so each checkpoint records them in
`plan.json` and a resume compares them before DeepSpeed loads anything.
"""

from __future__ import annotations

from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt_pipeline.preprocess.identity import shard_digest
from cpt_pipeline.train.data import DataError

PLAN_FILE = "plan.json"
ZERO_KEY = "spec.training.deepspeed.zeroStage (the stage used)"
SEGMENTS_KEY = "segments (steps at the end of each spec.data.tokenBudget the run has had)"
TOTAL_KEY = "total steps (spec.data.tokenBudget / tokens per step)"  # recorded before segments were
SHARDS_KEY = "shards (data/<set>/manifest.json)"


class ResumeMismatch(DataError):
    """The spec changed since the checkpoint in a way that changes the data order or the LR."""


def resume_plan(
    spec: ContinuedPretrainSpec,
    world_size: int,
    ends: list[int],
    zero_stage: int,
    manifests: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """{spec field path: value} of everything a resume must keep (world size as nodes x procsPerNode; the ZeRO
    stage, since the checkpoint's partitions are laid out by it; a digest of each set's shards, since shards
    made again under another spec hold other rows; the segments, which a grown budget may only extend)."""
    t, d = spec.training, spec.data
    return {
        "spec.training.nodes * spec.training.procsPerNode": world_size,
        "spec.training.microBatchSize": t.micro_batch_size,
        "spec.training.gradAccumulation": t.grad_accumulation,
        "spec.training.seed": t.seed,
        "spec.training.schedule": t.schedule.to_api(),
        "spec.data.sequenceLength": d.sequence_length,
        "spec.data.replay.fraction": str(float(d.active_replay.fraction)) if d.active_replay else "0.0",
        SEGMENTS_KEY: list(ends),
        ZERO_KEY: zero_stage,
        SHARDS_KEY: {name: shard_digest(manifest) for name, manifest in sorted(manifests.items())},
    }


def recorded_segments(recorded: dict[str, Any]) -> list[int]:
    """The segments a checkpoint was written under (one, from its total steps, for a plan made before segments)."""
    return list(recorded.get(SEGMENTS_KEY) or [recorded[TOTAL_KEY]])


def extends(recorded: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether the current plan continues the recorded one into a new segment (the budget grew)."""
    if recorded is None or (SEGMENTS_KEY not in recorded and TOTAL_KEY not in recorded):
        return False
    before, now = recorded_segments(recorded), current[SEGMENTS_KEY]
    return len(now) > len(before) and now[: len(before)] == before


def check_resume(recorded: dict[str, Any] | None, current: dict[str, Any], tag: str) -> None:
    """Raise ResumeMismatch naming every field whose value differs from the checkpoint's; the segments may grow
    (a new segment after the recorded ones), the shards of a grown run gain its new segments' sets."""
    if recorded is None:
        return  # a checkpoint written before plans were recorded
    recorded = dict(recorded)
    if extends(recorded, current):
        recorded.pop(SEGMENTS_KEY, None)
        recorded.pop(TOTAL_KEY, None)
        shards = {k: v for k, v in current[SHARDS_KEY].items() if k in recorded.get(SHARDS_KEY, {})}
        current = {**current, SHARDS_KEY: shards}
    elif TOTAL_KEY in recorded:  # a plan made before segments: its total is the one segment
        recorded[SEGMENTS_KEY] = [recorded.pop(TOTAL_KEY)]
    changed = [
        f"{field} was {recorded[field]!r}, is {current.get(field)!r}"
        for field in recorded
        if recorded[field] != current.get(field)
    ]
    if changed:
        raise ResumeMismatch(
            f"cannot resume from checkpoint {tag}: the spec changed since it was written ({'; '.join(changed)}). "
            "These settings fix the data order and the learning rate: restore them, or start a new run under "
            "a new spec.storage.uri"
        )
