"""Faults the tests inject into a training worker through its environment (never set in production)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXIT_AFTER_STEPS = "CPT_FAULT_EXIT_AFTER_STEPS"  # N: crash (exit 137) after step N
NAN_AT_STEP = "CPT_FAULT_NAN_AT_STEP"  # N: add NaN to every loss of step N (after the forward pass)
EXIT_BEFORE_EXPORT = "CPT_FAULT_EXIT_BEFORE_EXPORT"  # N: crash after step N's checkpoint, before its export
NAN_IN_FORWARD = "CPT_FAULT_NAN_IN_FORWARD"  # "N:R": the embeddings output NaN in step N's first micro-batch on rank R
INF_GRADIENT = "CPT_FAULT_INF_GRADIENT"  # N: rank 0's loss gradient is inf in step N (finite loss)


def _step(environ: Mapping[str, str], name: str) -> int:
    return int(environ.get(name) or 0)


@dataclass
class Faults:
    """The faults of this run (0: none); `at` is the (step, micro-batch) being computed, set by the loop."""

    exit_after: int = 0
    nan_loss: int = 0
    exit_before_export: int = 0
    nan_forward: tuple[int, int] | None = None
    inf_gradient: int = 0
    at: tuple[int, int] = (0, 0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        forward = environ.get(NAN_IN_FORWARD)
        step, _, rank = (forward or "").partition(":")
        return cls(
            _step(environ, EXIT_AFTER_STEPS),
            _step(environ, NAN_AT_STEP),
            _step(environ, EXIT_BEFORE_EXPORT),
            (int(step), int(rank)) if forward else None,
            _step(environ, INF_GRADIENT),
        )

    def arm(self, model: Any, rank: int) -> None:
        """Install the forward-pass fault on `model` (nothing when none is asked for)."""
        if self.nan_forward is None or self.nan_forward[1] != rank:
            return

        def poison(_module: Any, _inputs: Any, output: Any) -> Any:
            return output * float("nan") if self.at == (self.nan_forward[0], 0) else output  # type: ignore[index]

        model.get_input_embeddings().register_forward_hook(poison)

    def loss(self, loss: Any, step: int, rank: int) -> Any:
        """The loss with this step's loss faults applied (`step` counts from 1)."""
        if self.nan_loss == step:
            loss = loss + float("nan")
        if self.inf_gradient == step and rank == 0:
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss
