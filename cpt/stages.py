"""The container command of each pipeline stage, built in one place for the operator and the local runner.

Commands are argument lists, never shell strings: the spec travels as a file, and nothing from the user
is ever interpolated into a shell.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cpt.api import ContinuedPretrainSpec


class Stage(StrEnum):
    """Pipeline stages, in order."""

    PREPROCESS = "preprocess"  # N parallel workers (an Indexed Job): read, filter, tokenize; hashes bucketed
    DEDUP = "dedup"  # P partitions (an Indexed Job): global dedup per bucket; the last to finish packs shards
    TRAIN = "train"  # one pod per node; launches torchrun with procsPerNode workers
    EVALUATE = "evaluate"  # one process: lm-eval + perplexity on the base model and every milestone export
    REPORT = "report"  # one process: Table 1, loss curve, token-efficiency figure


SPEC_PATH = "/etc/kubecpt/spec.json"


def export_name(milestone: int) -> str:
    """`tokens-<13 digits>`: the export the trainer writes at a token milestone (`exports/<name>/`), and the
    name the operator gives that export's evaluation Job; both sides use this one rule."""
    return f"tokens-{milestone:013d}"


TRAINING_COMPLETE = ("train", "complete.json")  # written by the trainer after its last step; read by evaluation
GUARDRAIL_VERDICT = "guardrail.json"  # eval/<export>/: the forgetting guardrail's verdict, awaited by the trainer


def verdict_path(export: str) -> tuple[str, str, str]:
    """Where evaluation writes its guardrail verdict on `export`, which training under action stop waits for."""
    return ("eval", export, GUARDRAIL_VERDICT)


def stage_argv(
    stage: Stage, spec_path: str = SPEC_PATH, python: str = "python", extra: list[str] | None = None
) -> list[str]:
    """`python -P -m cpt_pipeline <stage> --spec <path> [extra...]`."""
    return [python, "-P", "-m", "cpt_pipeline", str(stage), "--spec", spec_path, *(extra or [])]


def parallelism(spec: ContinuedPretrainSpec, stage: Stage) -> int:
    """Processes (pods of an Indexed Job, each with its JOB_COMPLETION_INDEX) a stage runs as: one per preprocess
    worker, one per dedup partition, else one. The operator and the local runner both ask here."""
    if stage is Stage.PREPROCESS:
        return spec.data.preprocessing.workers
    if stage is Stage.DEDUP:
        return spec.data.preprocessing.partitions
    return 1
