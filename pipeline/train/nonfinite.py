"""Non-finite numbers in a step: the spec's policy for non-finite losses, and the steps DeepSpeed skips itself.

Every rank counts the micro-batches of the step whose loss is not finite (on the device, with no host sync);
the counts are summed across ranks with the step's other figures before the optimizer update, so every rank
takes the same decision (`before_update`): `stop` raises on every rank at once (exit 3, no rank left waiting
in a collective), `skipBatch` skips the whole update on every rank (`UpdateGate`: the weights and the
optimizer state stay as they were, DeepSpeed then discards the accumulated gradients).

DeepSpeed skips an update by itself when the gradient norm is not finite (`engine.skipped_steps` grows). In
fp16 that is dynamic loss scaling at work (an overflow lowers the scale and the step is skipped, by design);
in bf16/fp32 it means non-finite gradients, which the policy handles like a non-finite loss (`after_update`).
"""

from __future__ import annotations

import logging
import types
from typing import Any

log = logging.getLogger(__name__)
OVERFLOW = "overflow"  # fp16 dynamic loss scaling skipped the update
SKIPPED = "nonFinite"  # skipBatch skipped the update (a non-finite loss or gradient)


class NonFiniteLoss(RuntimeError):
    pass


def _advice(lr: Any) -> str:
    return f"lower spec.training.optimizer.lr, currently {lr}, or check the data"


def before_update(policy: str, bad: int, micro_batches: int, step: int, lr: Any) -> bool:
    """Whether to skip this step's update, given the micro-batches of all ranks (`micro_batches`) of which
    `bad` had a non-finite loss (the same numbers on every rank); raises NonFiniteLoss under `stop`."""
    if bad == 0:
        return False
    what = f"non-finite loss at step {step} in {bad} of {micro_batches} micro-batches (all ranks)"
    _skip_or_stop(policy, what, "the step's update is skipped on every rank", lr)
    return True


def after_update(
    precision: str, policy: str, skipped_by_engine: bool, skipped_by_us: bool, step: int, lr: Any
) -> str | None:
    """What a step whose update DeepSpeed skipped means: None (it was not skipped), OVERFLOW (fp16 loss
    scaling, as DeepSpeed intends: training goes on) or SKIPPED; raises NonFiniteLoss for non-finite gradients
    under `stop`."""
    if skipped_by_us:
        return SKIPPED
    if not skipped_by_engine:
        return None
    if precision == "fp16":
        log.info("fp16 loss-scale overflow at step %d: DeepSpeed skipped the update and lowered the scale", step)
        return OVERFLOW
    what = f"non-finite gradients at step {step} (finite losses, {precision})"
    _skip_or_stop(policy, what, "DeepSpeed skipped the update on every rank", lr)
    return SKIPPED


def _skip_or_stop(policy: str, what: str, skipped: str, lr: Any) -> None:
    """Under `skipBatch` say what is skipped; under `stop` raise NonFiniteLoss."""
    if policy != "skipBatch":
        raise NonFiniteLoss(f"{what}: stopping ({_advice(lr)})")
    log.warning("%s: %s", what, skipped)


class UpdateGate:
    """Lets the loop skip the parameter update of one step on every rank.

    It wraps `step` of the innermost torch optimizer (under DeepSpeed's ZeRO, bf16 or fp16 wrappers), which
    every configuration calls exactly once per update: skipping it leaves the weights and the optimizer state
    (moments, step count) unchanged, and DeepSpeed clears the accumulated gradients after the step as usual.
    """

    def __init__(self, engine_optimizer: Any) -> None:
        inner = engine_optimizer
        while getattr(inner, "optimizer", None) is not None and inner.optimizer is not inner:
            inner = inner.optimizer
        self.skip = False
        original = inner.step

        def step(_optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            return None if self.skip else original(*args, **kwargs)

        inner.step = types.MethodType(step, inner)  # a bound method, as torch's LR schedulers expect to wrap
