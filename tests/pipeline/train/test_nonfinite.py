"""The decisions behind fp16, bf16 and non-finite numbers, on CPU (no GPU here: the GPU answers are faked at
torch's own API, the decisions themselves are real)."""

from __future__ import annotations

import pytest
import torch

from cpt_pipeline.train.ds_config import effective_precision
from cpt_pipeline.train.nonfinite import OVERFLOW, SKIPPED, NonFiniteLoss, UpdateGate, after_update, before_update


def test_bf16_means_native_bf16_so_an_emulating_gpu_trains_in_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.is_bf16_supported() counts emulation (True on a V100/T4); only native support picks bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert effective_precision("bf16", "cuda") == "fp16"  # a V100: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert effective_precision("bf16", "cuda") == "bf16"  # an A100
    assert effective_precision("fp16", "cuda") == "fp16"
    assert effective_precision("bf16", "cpu") == "fp32"


def test_an_fp16_loss_scale_overflow_is_skipped_as_deepspeed_intends() -> None:
    """DeepSpeed reports an infinite grad norm and skips the update on every loss-scale overflow: training
    goes on, under either policy. In bf16/fp32 a skipped update means non-finite gradients: the policy applies."""
    for policy in ("stop", "skipBatch"):
        assert after_update("fp16", policy, skipped_by_engine=True, skipped_by_us=False, step=7, lr=1e-4) == OVERFLOW
        assert after_update("fp16", policy, skipped_by_engine=False, skipped_by_us=False, step=7, lr=1e-4) is None
    assert after_update("bf16", "skipBatch", skipped_by_engine=True, skipped_by_us=False, step=7, lr=1e-4) == SKIPPED
    with pytest.raises(NonFiniteLoss, match="non-finite gradients at step 7"):
        after_update("bf16", "stop", skipped_by_engine=True, skipped_by_us=False, step=7, lr=1e-4)


def test_a_non_finite_loss_stops_or_skips_the_update() -> None:
    assert before_update("stop", bad=0, micro_batches=4, step=3, lr=1e-4) is False
    assert before_update("skipBatch", bad=1, micro_batches=4, step=3, lr=1e-4) is True
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 3 in 1 of 4 micro-batches \(all ranks\)"):
        before_update("stop", bad=1, micro_batches=4, step=3, lr=1e-4)


def test_the_gate_skips_the_update_and_keeps_weights_and_optimizer_state() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    gate = UpdateGate(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # wraps the gated step, as in training
    model(torch.ones(1, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    gate.skip = True
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert optimizer.state == {} or all("step" not in s for s in optimizer.state.values())
    gate.skip = False
    optimizer.step()
    scheduler.step()
    assert not torch.equal(before[0], model.weight)


def test_evaluation_loads_in_bf16_only_where_the_gpu_computes_it_natively() -> None:
    """lm-eval's dtype follows training's rule: a V100/T4 (bf16 only emulated) evaluates in fp16."""
    from cpt_pipeline.evaluate.harness import eval_dtype

    assert eval_dtype("cuda", native_bf16=lambda: True) == "bfloat16"
    assert eval_dtype("cuda", native_bf16=lambda: False) == "float16"
    assert eval_dtype("cpu", native_bf16=lambda: True) == "float32"
