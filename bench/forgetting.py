"""Forgetting and replay, through the product and in a plain PyTorch loop on the same split.

The shared stories260K model (TinyStories) is continued on the shared OpenStax corpus for ~1.2M tokens at 0%,
5% and 25% replay of stories from its own distribution. Held-out domain loss (3% of the OpenStax sections,
chosen by the product's `evaluation.perplexity.domain.heldOut` hash, so no held-out section is trained on)
and held-out general loss (200 stories kept out of the replay file) are measured before and after.

- kubecpt: `cpt run` stages preprocess, dedup, train, evaluate of a spec per arm (filters and decontamination
  off so that both sides train on the same documents; ZeRO auto, one process).
- plain loop: the same documents minus the same held-out ones, tokenized, packed to 256 tokens, shuffled;
  each row is a replay row with probability = the replay share; AdamW (0.9, 0.95, wd 0.005 on matrices),
  lr 1e-3, cosine with 10% warmup, clip 1.0, the same micro-batch and steps; loss scored per document after
  a BOS, in windows of 256 tokens, as the product scores perplexity.

    .venv/bin/python -P bench/forgetting.py [--tokens 1228800] [--arms 0,0.05,0.25]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cpt_pipeline import jsonl

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
MODEL = SHARED / "models" / "stories260K"
OPENSTAX = SHARED / "corpora" / "openstax_stem.jsonl"
STORIES = SHARED / "corpora" / "stories260k_samples.jsonl"
SEQ, MICRO, LR, HELD_OUT, GENERAL_HELD = 256, 8, 1e-3, 0.03, 200


def read_texts(path: Path) -> list[str]:
    return [record["text"] for record in jsonl.records(path.read_bytes())]


def split_stories(work: Path) -> tuple[Path, Path]:
    """The stories file split in two: the replay set and the general held-out set (never trained on)."""
    stories = read_texts(STORIES)
    replay, held = work / "stories-replay.jsonl", work / "stories-heldout.jsonl"
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[:GENERAL_HELD]))
    replay.write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[GENERAL_HELD:]))
    return replay, held


def spec_for(fraction: float, tokens: int, replay: Path, general: Path, storage: Path) -> dict:
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": f"forgetting-{round(fraction * 100)}"},
        "spec": {
            "model": {"uri": str(MODEL)},
            "data": {
                "sources": [{"name": "openstax", "uri": str(OPENSTAX)}],
                "replay": {"source": {"name": "stories", "uri": str(replay)}, "fraction": str(fraction)},
                "sequenceLength": SEQ,
                "tokenBudget": tokens,
                "filters": {"minLines": 0, "repetition": {"enabled": False}},
                "decontamination": {"enabled": False},
                "preprocessing": {"workers": 2, "limitToBudget": False},
            },
            "training": {
                "deepspeed": {"precision": "fp32", "gradientCheckpointing": False},
                "optimizer": {"lr": str(LR)},
                "microBatchSize": MICRO,
                "gradAccumulation": 1,
                "checkpoint": {"intervalSteps": 10**6},
                "logIntervalSteps": 50,
            },
            "evaluation": {
                "tasks": [],
                "perplexity": {
                    "domain": {"heldOut": str(HELD_OUT), "maxDocuments": 1000},
                    "general": {"uri": str(general), "maxDocuments": GENERAL_HELD},
                },
            },
            "storage": {"uri": str(storage)},
        },
    }


def run_product(fraction: float, tokens: int, replay: Path, general: Path, work: Path) -> dict[str, float]:
    storage = work / f"product-{fraction}"
    path = work / f"product-{fraction}.yaml"
    path.write_text(yaml.safe_dump(spec_for(fraction, tokens, replay, general, storage)))
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(path), "--stages", "preprocess,dedup,train,evaluate"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    milestones = json.loads((storage / "eval" / "status.json").read_text())["milestones"]
    first, last = milestones[0], milestones[-1]
    return {
        "domain_before": math.log(first["domainPerplexity"]),
        "domain_after": math.log(last["domainPerplexity"]),
        "general_before": math.log(first["generalPerplexity"]),
        "general_after": math.log(last["generalPerplexity"]),
        "seconds": seconds,
        "heldout_file": str(storage / "data" / "heldout" / "domain.jsonl"),
    }


def doc_loss(model, tokenizer, texts: list[str]) -> float:
    """Mean NLL per predicted token: each document after BOS, in windows of SEQ tokens (the product's rule)."""
    import torch

    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
            for start in range(0, max(1, len(ids) - 1), SEQ - 1):
                piece = torch.tensor([ids[start : start + SEQ]])
                if piece.shape[1] < 2:
                    continue
                logits = model(input_ids=piece).logits[0, :-1].float()
                nll += float(torch.nn.functional.cross_entropy(logits, piece[0, 1:], reduction="sum"))
                count += piece.shape[1] - 1
    model.train()
    return nll / count


def packed(tokenizer, texts: list[str]) -> list[list[int]]:
    stream: list[int] = []
    for text in texts:
        stream += [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    return [stream[i : i + SEQ] for i in range(0, len(stream) - SEQ + 1, SEQ)]


def run_plain(fraction: float, tokens: int, replay: Path, general: Path, held_file: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpt.api.training import Schedule
    from cpt_pipeline.preprocess.held_out import is_held_out
    from cpt_pipeline.train.schedule import lr_multiplier

    torch.manual_seed(42)
    rng = random.Random(42)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    domain_held = read_texts(held_file)
    general_held = read_texts(general)
    train_docs = [t for t in read_texts(OPENSTAX) if t.strip() and not is_held_out(t, HELD_OUT)]
    steps = tokens // (MICRO * SEQ)
    domain_rows = packed(tokenizer, train_docs)
    replay_rows = packed(tokenizer, read_texts(replay)) if fraction > 0 else []
    rng.shuffle(domain_rows)
    rng.shuffle(replay_rows)
    before = (doc_loss(model, tokenizer, domain_held), doc_loss(model, tokenizer, general_held))
    decay, plain = [], []
    for param in model.parameters():
        (decay if param.ndim >= 2 else plain).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.005}, {"params": plain, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(Schedule(), steps))
    started = time.perf_counter()
    d = r = 0
    for _ in range(steps):
        batch = []
        for _ in range(MICRO):
            if replay_rows and rng.random() < fraction:
                batch.append(replay_rows[r % len(replay_rows)])
                r += 1
            else:
                batch.append(domain_rows[d % len(domain_rows)])
                d += 1
        ids = torch.tensor(batch)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    after = (doc_loss(model, tokenizer, domain_held), doc_loss(model, tokenizer, general_held))
    return {
        "domain_before": before[0],
        "domain_after": after[0],
        "general_before": before[1],
        "general_after": after[1],
        "seconds": seconds,
        "domain_epochs": d / len(domain_rows),
    }


def change(result: dict[str, float], which: str) -> float:
    return (result[f"{which}_after"] - result[f"{which}_before"]) / result[f"{which}_before"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1_228_800)  # 600 steps of 8 x 256 tokens
    parser.add_argument("--arms", default="0,0.05,0.25")
    args = parser.parse_args()
    if not SHARED.exists():
        print(f"bench/forgetting.py needs the shared data at {SHARED}", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kubecpt-forgetting-") as scratch:
        work = Path(scratch)
        replay, general = split_stories(work)
        for fraction in (float(a) for a in args.arms.split(",")):
            product = run_product(fraction, args.tokens, replay, general, work)
            plain = run_plain(fraction, args.tokens, replay, general, Path(product["heldout_file"]))
            rows.append((fraction, product, plain))
            print(
                f"arm {fraction:.0%} replay: product {product['seconds']:.0f}s, plain {plain['seconds']:.0f}s",
                flush=True,
            )
    print(f"\nheld-out loss change after {args.tokens:,} tokens (before -> after, nats per token)")
    names = ("kubecpt domain", "plain domain", "kubecpt general", "plain general")
    header = f"{'replay':>7} | " + " | ".join(f"{name:>24}" for name in names)
    print(header)
    print("-" * len(header))
    for fraction, product, plain in rows:
        cells = [
            f"{r[w + '_before']:.3f} -> {r[w + '_after']:.3f} ({change(r, w):+.1%})"
            for w, r in (("domain", product), ("domain", plain), ("general", product), ("general", plain))
        ]
        print(f"{fraction:>7.0%} | " + " | ".join(f"{c:>24}" for c in cells))
    for fraction, product, plain in rows:
        print(
            f"replay {fraction:.0%}: kubecpt / plain loss change, domain "
            f"{change(product, 'domain') / change(plain, 'domain'):.2f}x, general after-loss ratio "
            f"{product['general_after'] / plain['general_after']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
