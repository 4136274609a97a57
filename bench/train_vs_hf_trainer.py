"""Training throughput on CPU: kubecpt's training stage vs a plain Hugging Face Trainer loop, same run.

Same model (a small Llama built from the same config and seed), same packed rows, same micro-batch,
fp32, one process, the same number of threads. kubecpt runs its real stage (`python -m cpt_pipeline
train`: torchrun + DeepSpeed), once with ZeRO stage 0 and once with ZeRO-3 (its default). The HF Trainer
reads the same rows from the shards. Steady-state tokens/s leave out the first steps (start-up, warm-up).

    .venv/bin/python -P bench/train_vs_hf_trainer.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
ARCH = {
    "hiddenSize": 256,
    "numLayers": 4,
    "numHeads": 8,
    "numKvHeads": 4,
    "intermediateSize": 688,
    "vocabSize": 512,
    "maxPositionEmbeddings": 512,
}
SEQ, MICRO, WARMUP = 256, 8, 5


def resource(storage: Path, steps: int, zero: int | str) -> dict:
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"architecture": ARCH, "tokenizer": str(SHARED / "models" / "stories260K")},
            "data": {
                "sources": [{"name": "stem", "uri": str(SHARED / "corpora" / "openstax_stem.jsonl")}],
                "sequenceLength": SEQ,
                "tokenBudget": steps * SEQ * MICRO,
                "decontamination": {"enabled": False},
                "preprocessing": {"workers": 1},
            },
            "training": {
                "procsPerNode": 1,
                "microBatchSize": MICRO,
                "gradAccumulation": 1,
                "deepspeed": {"zeroStage": zero, "precision": "fp32", "gradientCheckpointing": False},
                "optimizer": {"lr": "1e-3"},
                "checkpoint": {"intervalSteps": 10**6},
                "logIntervalSteps": 10**6,
                "attention": "sdpa",
            },
            "storage": {"uri": str(storage)},
        },
    }


def steady_tokens_per_second(step_ends: list[float]) -> float:
    """Tokens/s between the end of step WARMUP and the last step."""
    span = step_ends[-1] - step_ends[WARMUP - 1]
    return (len(step_ends) - WARMUP) * SEQ * MICRO / span


def run_kubecpt(work: Path, steps: int, zero: int | str, env: dict[str, str]) -> float:
    from cpt.kube_yaml import dump

    out = work / f"zero{zero}"
    shutil.copytree(work / "prepared" / "data", out / "data")
    spec = work / f"zero{zero}.yaml"
    spec.write_text(dump(resource(out, steps, zero)))
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    ends = [time.perf_counter() for line in process.stdout if '"event": "train_step"' in line]  # type: ignore[union-attr]
    if process.wait() != 0 or len(ends) != steps:
        raise RuntimeError(f"kubecpt training failed (exit {process.returncode}, {len(ends)} steps)")
    return steady_tokens_per_second(ends)


def packed_rows(work: Path) -> Any:
    """The prepared shards' rows (int64, SEQ tokens each), in order: what every trainer here reads."""
    import numpy as np

    data = work / "prepared" / "data" / "domain"
    manifest = json.loads((data / "manifest.json").read_text())
    shards = manifest["sources"]["stem"]["shards"]
    return np.concatenate(
        [np.fromfile(data / "stem" / s["path"], dtype=manifest["dtype"]).reshape(-1, SEQ) for s in shards]
    ).astype(np.int64)


def compare(description: str, peer: str, run_peer: Callable[[Path, int, int], float], goal: str = "") -> int:
    """Prepare the shards once, then time the peer and kubecpt at ZeRO-0, ZeRO-3 and zeroStage auto (the default);
    print tokens/s and ratios."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            peer: run_peer(work, args.steps, args.threads),
            "kubecpt ZeRO-0": run_kubecpt(work, args.steps, 0, env),
            "kubecpt ZeRO-3": run_kubecpt(work, args.steps, 3, env),
            "kubecpt auto": run_kubecpt(work, args.steps, "auto", env),
        }
        for name, tps in results.items():
            print(f"{name:>15}: {tps:9.0f} tokens/s")
        for name in ("kubecpt ZeRO-0", "kubecpt ZeRO-3", "kubecpt auto"):
            print(f"{name} / {peer}: {results[name] / results[peer]:.2f}x{goal}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_hf_trainer(work: Path, steps: int, threads: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from cpt.api.model import Architecture
    from cpt_pipeline.train.model import llama_config

    torch.set_num_threads(threads)
    rows = packed_rows(work)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            ids = torch.from_numpy(rows[i])
            return {"input_ids": ids, "labels": ids}

    class Clock(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, *args, **kwargs) -> None:
            self.ends.append(time.perf_counter())

    torch.manual_seed(42)
    config = llama_config(Architecture.model_validate(ARCH))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=MICRO,
        max_steps=steps,
        learning_rate=1e-3,
        weight_decay=0.005,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=42,
        disable_tqdm=True,
    )
    clock = Clock()
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[clock]).train()
    return steady_tokens_per_second(clock.ends)


def main() -> int:
    return compare(__doc__, "HF Trainer", run_hf_trainer)


if __name__ == "__main__":
    sys.exit(main())
