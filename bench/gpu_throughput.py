"""Training throughput and MFU of the MobileLLM-125M shape at sequence length 2048 on one GPU.

It runs the training stage's own pieces: the model builder (preset mobilellm-125m), the DeepSpeed config
builder (bf16, the ZeRO stage given), fused AdamW, and SDPA attention (flash kernels on Hopper and
Ampere), on random tokens. It reports steady-state tokens/s and MFU = tokens/s x model FLOPs per token /
peak bf16 FLOPs (989 TFLOP/s for H100/H200 SXM, 312 for A100; override with CPT_PEAK_TFLOPS). The
reference study reached about 12k tokens/s per A100; the goal is >= 40% MFU on one H100.

    python -P bench/gpu_throughput.py [--micro-batch 16] [--zero 0] [--compile] [--no-deepspeed]
    python -P bench/gpu_throughput.py --device cpu --preset tiny --seq 128 --steps 3   # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mobilellm-125m")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--zero", type=int, default=0, help="ZeRO stage (0-3); one GPU needs no sharding")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--no-deepspeed", action="store_true", help="plain torch loop (autocast bf16)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch

    from cpt.api.model import Architecture
    from cpt.api.training import TrainingSpec
    from cpt_pipeline.train.ds_config import deepspeed_config
    from cpt_pipeline.train.model import count_parameters, llama_config
    from cpt_pipeline.train.progress import flops_per_token, peak_flops

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu for a smoke test")
    torch.manual_seed(0)
    config = llama_config(Architecture(preset=args.preset))
    config._attn_implementation = "sdpa"
    config.max_position_embeddings = max(config.max_position_embeddings, args.seq)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).to(args.device)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    params = count_parameters(model)
    if args.compile:
        model = torch.compile(model)
    precision = "bf16" if cuda else "fp32"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    training = TrainingSpec.model_validate(
        {
            "microBatchSize": args.micro_batch,
            "gradAccumulation": 1,
            "deepspeed": {"zeroStage": args.zero, "precision": precision},
        }
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.005, fused=cuda or None)
    if args.no_deepspeed:
        engine = None
    else:
        import deepspeed

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(training, 1, precision)
        )

    def step() -> float:
        tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq), device=args.device)
        if engine is not None:
            loss = engine(input_ids=tokens, labels=tokens).loss
            engine.backward(loss)
            engine.step()
        else:
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens_per_second = args.steps * args.micro_batch * args.seq / seconds
    flops = flops_per_token(params, config.num_hidden_layers, config.hidden_size, args.seq)
    peak = peak_flops(args.device)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    mode = "plain torch" if args.no_deepspeed else f"DeepSpeed ZeRO-{args.zero}"
    print(
        f"device: {device}; model: {args.preset} ({params / 1e6:.1f}M params), seq {args.seq}, "
        f"micro-batch {args.micro_batch}, {precision}, {mode}{', compiled' if args.compile else ''}"
    )
    print(f"tokens/s: {tokens_per_second:,.0f}  ({seconds / args.steps * 1000:.1f} ms/step, last loss {loss:.3f})")
    if peak:
        print(
            f"MFU: {tokens_per_second * flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s "
            f"({flops / 1e9:.2f} GFLOP per token)"
        )
    print(f"vs the reference study (~12k tokens/s per A100): {tokens_per_second / 12000:.1f}x")
    if cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
