"""Training throughput on CPU: kubecpt's training stage vs a plain PyTorch loop, same run.

Same model (a small Llama from the same config and seed), same packed rows in the same order, same
micro-batch, sequence length, fp32, AdamW (lr 1e-3, weight decay 0.005) with cosine and 10% warm-up, one
process, the same number of threads. kubecpt runs its real stage (`python -m cpt_pipeline train`: torchrun +
DeepSpeed) with ZeRO stage 0 and with ZeRO-3. The plain loop is what a researcher would write by hand: the
floor of overhead. Steady-state tokens/s leave out the first steps (start-up, warm-up). Goal (issue: the
laptop experience): kubecpt >= 0.9x the plain loop.

    .venv/bin/python -P bench/train_vs_plain_torch.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_hf_trainer import ARCH, MICRO, compare, packed_rows, steady_tokens_per_second


def run_plain_torch(work: Path, steps: int, threads: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from cpt.api.model import Architecture
    from cpt_pipeline.train.model import llama_config

    torch.set_num_threads(threads)
    rows = torch.from_numpy(packed_rows(work))
    torch.manual_seed(42)
    config = llama_config(Architecture.model_validate(ARCH))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.005)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ends = []
    for step in range(steps):
        start = (step * MICRO) % len(rows)
        batch = rows[start : start + MICRO]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return steady_tokens_per_second(ends)


def main() -> int:
    return compare(__doc__, "plain PyTorch", run_plain_torch, goal=" (goal >= 0.90x)")


if __name__ == "__main__":
    sys.exit(main())
