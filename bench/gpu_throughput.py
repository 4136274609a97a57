"""Training throughput and MFU of the MobileLLM-125M shape at sequence length 2048 on one GPU, measured
through the real training stage, beside a plain PyTorch loop on the same model and batch (the peer).

The product side is the training stage itself: `python -m cpt_pipeline train` (launcher, torchrun worker,
process group, DeepSpeed engine, the loop, checkpoint and export at the end) on packed shards of random
tokens written by the shard writer, with a model built from the preset and a generated word-level
tokenizer. Steady-state tokens/s comes from the stage's own per-step times in `train/metrics.jsonl`
(the first `--warmup` steps and the last step, which saves the final checkpoint and export, are left out).
MFU = tokens/s x model FLOPs per token / peak bf16 FLOPs (989 TFLOP/s for H100/H200 SXM, 312 for A100;
override with CPT_PEAK_TFLOPS). The reference study reached about 12k tokens/s per A100; the goal is
>= 40% MFU on one H100.

    python -P bench/gpu_throughput.py [--micro-batch 16] [--zero 0] [--checkpointing] [--compile]
    python -P bench/gpu_throughput.py --device cpu --preset tiny --seq 64 --micro-batch 4 --steps 3  # smoke

The last lines are the stage's figure as an entry of cpt/throughput.yaml (kind bench), which `cpt plan` and the
operator's status.plan prefer to the paper's and published figures once added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer with `vocab_size` entries and an EOS token (the export copies it)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {"</s>": 0, "<unk>": 1, **{f"t{i}": i for i in range(2, vocab_size)}}
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))


def write_shards(storage_root: Path, tokenizer_dir: Path, seq: int, rows: int, seed: int = 0) -> None:
    """Random-token rows packed by the real shard writer, with the manifest the dedup stage would write."""
    import numpy as np

    from cpt_pipeline.preprocess.shards import FORMAT, ShardPacker, rows_per_shard
    from cpt_pipeline.preprocess.tokenize import TextTokenizer
    from cpt_pipeline.storage import Storage

    info = TextTokenizer(str(tokenizer_dir)).info
    dtype = np.dtype(info.dtype)
    storage = Storage.open_uri(str(storage_root))
    packer = ShardPacker(storage.sub("data", "domain", "synthetic"), seq, dtype, rows_per_shard(seq, dtype.itemsize))
    packer.add(np.random.default_rng(seed).integers(2, info.vocab_size, rows * seq).astype(dtype))
    entry = {**packer.finish(), "weight": 1}
    manifest = {
        "format": FORMAT,
        "set": "domain",
        "dtype": dtype.name,
        "seq_len": seq,
        "tokenizer": info.to_json(),
        "eos_id": info.eos_id,
        "sources": {"synthetic": entry},
        "rows": entry["rows"],
        "tokens": entry["tokens"],
        "tail_tokens": entry["tail_tokens"],
        "budget": rows * seq,  # the spec's tokenBudget (stage_spec): training reads the segment made for it
    }
    storage.write_json(manifest, "data", "domain", "manifest.json")


def stage_spec(root: Path, args: argparse.Namespace, total_steps: int) -> Path:
    from cpt.kube_yaml import dump

    architecture: dict[str, Any] = {"preset": args.preset}
    if args.seq > 2048:
        architecture["maxPositionEmbeddings"] = args.seq
    spec = {
        "model": {"architecture": architecture, "tokenizer": str(root / "tokenizer")},
        "data": {
            "sources": [{"name": "synthetic", "uri": str(root / "unused")}],
            "sequenceLength": args.seq,
            "tokenBudget": total_steps * args.micro_batch * args.seq,
        },
        "training": {
            "procsPerNode": 1,
            "microBatchSize": args.micro_batch,
            "gradAccumulation": 1,
            "attention": "sdpa",
            "compile": args.compile,
            "deepspeed": {"zeroStage": args.zero, "precision": "bf16", "gradientCheckpointing": args.checkpointing},
            "schedule": {"warmupFraction": "0.1"},
            "checkpoint": {"intervalSteps": 10**9},
            "logIntervalSteps": 10**6,
        },
        "evaluation": {"tasks": []},
        "storage": {"uri": str(root / "run")},
    }
    doc = {"apiVersion": "cpt.kubecpt.dev/v1alpha1", "kind": "ContinuedPretrain", "metadata": {"name": "bench"}}
    path = root / "bench.yaml"
    path.write_text(dump({**doc, "spec": spec}))
    return path


def training_stage(args: argparse.Namespace) -> dict[str, Any]:
    """Run the real training stage; steady-state tokens/s from its own per-step times."""
    from cpt.api.model import Architecture
    from cpt_pipeline.train.model import llama_config

    vocab = llama_config(Architecture(preset=args.preset)).vocab_size
    total_steps = args.warmup + args.steps + 1
    with tempfile.TemporaryDirectory(prefix="kubecpt-bench-") as scratch:
        root = Path(scratch)
        write_tokenizer(root / "tokenizer", vocab)
        write_shards(root / "run", root / "tokenizer", args.seq, total_steps * args.micro_batch)
        spec = stage_spec(root, args, total_steps)
        env = {**os.environ, **({"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
        result = subprocess.run(
            [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-5000:])
            raise SystemExit(f"the training stage failed with exit code {result.returncode}")
        metrics = [
            json.loads(line) for line in (root / "run" / "train" / "metrics.jsonl").read_text().split("\n") if line
        ]
    timed = metrics[args.warmup : -1]
    seconds = sum(r["stepSeconds"] for r in timed)
    return {
        "tokens_per_second": len(timed) * args.micro_batch * args.seq / seconds,
        "seconds_per_step": seconds / len(timed),
        "steps": len(metrics),
        "last_loss": timed[-1]["loss"],
        "peak_memory": max((r.get("peakMemoryBytes", 0) for r in metrics), default=0),
    }


def memory_line(args: argparse.Namespace, params: int, config: Any, measured: int) -> str:
    """The training stage's peak GPU memory (the allocator's) beside cpt.memory's estimate for the same shape
    (the figure `zeroStage: auto`, `cpt plan` and the micro-batch check use), before and with its headroom."""
    from cpt.api.training import DeepSpeed
    from cpt.memory import GIB, HEADROOM, Footprint, ModelShape

    ds = DeepSpeed(zeroStage=args.zero, gradientCheckpointing=args.checkpointing)
    shape = ModelShape(params, config.num_hidden_layers, config.hidden_size, config.vocab_size)
    footprint = Footprint(ds, shape, "bf16", args.micro_batch, args.seq, 1, args.compile)
    raw = footprint.model_states(args.zero) + footprint.activations()
    return (
        f"peak GPU memory (training stage, allocated): {measured / GIB:.2f} GiB; cpt.memory estimate "
        f"{raw / GIB:.2f} GiB before its {HEADROOM}x headroom ({raw / measured:.2f}x the measured), "
        f"{footprint.bytes(args.zero) / GIB:.2f} GiB with it"
    )


def plain_torch(args: argparse.Namespace) -> float:
    """The peer: the same model, batch and sequence length in a plain PyTorch loop (AdamW, bf16 autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    from cpt.api.model import Architecture
    from cpt_pipeline.train.model import llama_config

    cuda = args.device == "cuda"
    torch.manual_seed(0)
    config = llama_config(Architecture(preset=args.preset))
    config._attn_implementation = "sdpa"
    config.max_position_embeddings = max(config.max_position_embeddings, args.seq)
    model = AutoModelForCausalLM.from_config(config).to(args.device)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.005, fused=cuda or None)
    if args.compile:
        model = torch.compile(model)

    def step() -> None:
        tokens = torch.randint(2, config.vocab_size, (args.micro_batch, args.seq), device=args.device)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # the training loop reads the loss every step too

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return args.steps * args.micro_batch * args.seq / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mobilellm-125m")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--zero", type=int, default=0, help="ZeRO stage (0-3); one GPU needs no sharding")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--no-peer", action="store_true", help="skip the plain PyTorch loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile (spec.training.compile) on both sides")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()

    import torch

    from cpt.api.model import Architecture
    from cpt.throughput import flops_per_token
    from cpt_pipeline.train.model import count_parameters, llama_config
    from cpt_pipeline.train.progress import peak_flops

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu for a smoke test")
    config = llama_config(Architecture(preset=args.preset))
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        params = count_parameters(AutoModelForCausalLM.from_config(config))
    flops = flops_per_token(params, config.num_hidden_layers, config.hidden_size, args.seq)
    peak = peak_flops(args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device: {name}; model: {args.preset} ({params / 1e6:.1f}M params), seq {args.seq}, "
        f"micro-batch {args.micro_batch}, DeepSpeed ZeRO-{args.zero}"
        f"{', activation checkpointing' if args.checkpointing else ''}"
    )
    stage = training_stage(args)

    def mfu(tokens_per_second: float) -> str:
        return f", MFU {tokens_per_second * flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else ""

    print(
        f"training stage (python -m cpt_pipeline train, {stage['steps']} steps): "
        f"{stage['tokens_per_second']:,.0f} tokens/s per GPU ({stage['seconds_per_step'] * 1000:.1f} ms/step)"
        f"{mfu(stage['tokens_per_second'])}"
    )
    if stage["peak_memory"]:
        print(memory_line(args, params, config, stage["peak_memory"]))
    if not args.no_peer:
        peer = plain_torch(args)
        print(f"plain PyTorch loop (peer, same run): {peer:,.0f} tokens/s per GPU{mfu(peer)}")
        print(f"training stage / plain PyTorch: {stage['tokens_per_second'] / peer:.2f}x")
    print(f"vs the reference study (~12k tokens/s per A100): {stage['tokens_per_second'] / 12000:.2f}x")
    print(table_entry(args, name, params, config, stage["tokens_per_second"]))
    return 0


def table_entry(args: argparse.Namespace, device: str, params: int, config: Any, tokens_per_second: float) -> str:
    """The figure as an entry of cpt/throughput.yaml's figures (`cpt plan` and status.plan use it), under the GPU
    type the device's name matches (else the name itself: add that type under gpus first)."""
    import datetime

    import yaml

    from cpt.throughput import load_table

    gpu = load_table().for_product(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        revision = commit.stdout.strip() or os.environ.get("CPT_BENCH_COMMIT", "unknown")
    except FileNotFoundError:  # no git where the GPU is
        revision = os.environ.get("CPT_BENCH_COMMIT", "unknown")
    settings = f"micro-batch {args.micro_batch}, ZeRO-{args.zero}" + (", activation checkpointing" * args.checkpointing)
    entry = {
        "gpu": gpu.name if gpu else device,
        "kind": "bench",
        "tokensPerSecond": round(tokens_per_second),
        "model": args.preset,
        "parameters": params,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "sequenceLength": args.seq,
        "source": f"bench/gpu_throughput.py on one {device}, {datetime.date.today()}, commit "
        f"{revision}: the training stage, {settings}, bf16",
    }
    head = "entry for cpt/throughput.yaml (figures):" if gpu else f"no GPU type of cpt/throughput.yaml is {device}:"
    return head + "\n" + yaml.safe_dump([entry], sort_keys=False, width=1000)


if __name__ == "__main__":
    sys.exit(main())
