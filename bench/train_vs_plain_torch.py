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

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_hf_trainer import ARCH, MICRO, REPO, SEQ, WARMUP, resource, run_kubecpt, steady_tokens_per_second


def run_plain_torch(work: Path, steps: int, threads: int) -> float:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from cpt.api.model import Architecture
    from cpt_pipeline.train.model import llama_config

    torch.set_num_threads(threads)
    data = work / "prepared" / "data" / "domain"
    manifest = json.loads((data / "manifest.json").read_text())
    shards = manifest["sources"]["stem"]["shards"]
    rows = np.concatenate(
        [np.fromfile(data / "stem" / s["path"], dtype=manifest["dtype"]).reshape(-1, SEQ) for s in shards]
    )
    rows = torch.from_numpy(rows.astype(np.int64))
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
        batch = rows[(step * MICRO) % len(rows) : (step * MICRO) % len(rows) + MICRO]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return steady_tokens_per_second(ends)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from cpt.kube_yaml import dump
    from cpt_pipeline.local import run_preprocessing

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(args.threads)}
    work = Path(tempfile.mkdtemp(prefix="cpt-train-bench-"))
    try:
        spec = work / "prepare.yaml"
        spec.write_text(dump(resource(work / "prepared", args.steps, 0)))
        run_preprocessing(spec, 1, env=env, cwd=REPO)
        print(
            f"model: Llama {ARCH}, seq {SEQ}, micro-batch {MICRO}, fp32, 1 process, {args.threads} threads, "
            f"{args.steps} steps (first {WARMUP} excluded)"
        )
        results = {
            "plain PyTorch": run_plain_torch(work, args.steps, args.threads),
            "kubecpt ZeRO-0": run_kubecpt(work, args.steps, 0, env),
            "kubecpt ZeRO-3": run_kubecpt(work, args.steps, 3, env),
        }
        for name, tps in results.items():
            print(f"{name:>15}: {tps:9.0f} tokens/s")
        for name in ("kubecpt ZeRO-0", "kubecpt ZeRO-3"):
            print(f"{name} / plain PyTorch: {results[name] / results['plain PyTorch']:.2f}x (goal >= 0.90x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
