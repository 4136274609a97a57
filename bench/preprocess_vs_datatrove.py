"""Preprocessing throughput: kubecpt vs datatrove (the library that built fineweb-edu), same input, same run.

Both do the paper's preprocessing on the same jsonl input with the same number of workers: drop
documents with fewer than 3 lines, Gopher repetition filter, global exact dedup, tokenize with the
MobileLLM (Llama-2) tokenizer, EOS after each document. A raw tokenizer-only pass (`encode_batch`, no
reading or filtering) is timed too, as the ceiling.

Input: the shared OpenStax corpus plus 10% of its documents again (exact duplicates to remove).

    .venv/bin/python -P bench/preprocess_vs_datatrove.py [--workers 2] [--copies 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_spec import REPO, SHARED, TOKENIZER, write_preprocess_spec


def make_input(work: Path, copies: int, files: int) -> tuple[Path, int]:
    """The corpus (copies times) plus 10% exact duplicates, in `files` jsonl files; returns their directory."""
    docs = [json.loads(line) for line in (SHARED / "corpora" / "openstax_stem.jsonl").open()]
    rows = [d for _ in range(copies) for d in docs] + docs[: len(docs) // 10]
    folder = work / "input"
    folder.mkdir(parents=True)
    per_file = -(-len(rows) // files)
    for f in range(files):
        with (folder / f"corpus-{f:03d}.jsonl").open("w") as handle:
            for i, d in enumerate(rows[f * per_file : (f + 1) * per_file], start=f * per_file):
                handle.write(json.dumps({"id": f"{d['id']}#{i}", "text": d["text"]}) + "\n")
    return folder, len(rows)


def run_kubecpt(input_path: Path, work: Path, workers: int) -> dict:
    from cpt_pipeline.local import run_preprocessing

    spec_path = write_preprocess_spec(work / "bench.yaml", input_path, work / "kubecpt-out", workers)
    start = time.perf_counter()
    run_preprocessing(spec_path, workers, cwd=REPO)
    seconds = time.perf_counter() - start
    status = json.loads((work / "kubecpt-out" / "data" / "preprocess-status.json").read_text())
    return {
        "seconds": seconds,
        "docs": status["docsRead"],
        "kept": status["docsKept"],
        "tokens": status["tokens"],
        "dropped": status["docsDropped"],
        "duplicates": status["duplicates"],
    }


def run_datatrove(input_path: Path, work: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import GopherRepetitionFilter, LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    base = work / "datatrove"
    config = ExactDedupConfig(content_getter=lambda doc: doc.text.encode())
    three_lines = LambdaFilter(lambda doc: sum(1 for line in doc.text.split("\n") if line.strip()) >= 3)
    stages = [
        [JsonlReader(str(input_path)), three_lines, GopherRepetitionFilter(), JsonlWriter(str(base / "filtered"))],
        [JsonlReader(str(base / "filtered")), ExactDedupSignature(str(base / "sigs"), config, finder_workers=1)],
        [ExactFindDedups(str(base / "sigs"), str(base / "dups"), config)],
        [
            JsonlReader(str(base / "filtered")),
            ExactDedupFilter(str(base / "dups"), config),
            DocumentTokenizer(
                str(base / "tokens"), str(TOKENIZER / "tokenizer.json"), eos_token="</s>", shuffle_documents=False
            ),
        ],
    ]
    tasks = [workers, workers, 1, workers]
    start = time.perf_counter()
    for i, (pipeline, n) in enumerate(zip(stages, tasks, strict=True)):
        LocalPipelineExecutor(
            pipeline, tasks=n, workers=min(n, workers), logging_dir=str(base / f"logs{i}"), skip_completed=False
        ).run()
    seconds = time.perf_counter() - start
    first = {s["name"].split(":")[0]: s["stats"] for s in json.loads((base / "logs0" / "stats.json").read_text())}
    last = {s["name"].split(":")[0]: s["stats"] for s in json.loads((base / "logs3" / "stats.json").read_text())}
    dropped = {
        f"{name.split()[-1]}:{k}": v
        for name, st in first.items()
        if "FILTER" in name
        for k, v in st.items()
        if k.startswith("dropped_")
    }
    return {
        "seconds": seconds,
        "docs": first["📖 - READER"]["documents"]["total"],
        "kept": last["🫂 - DEDUPS"]["forwarded"],
        "tokens": last["🔢 - TOKENIZER"]["tokens"]["total"],
        "dropped": dropped,
        "input_files_per_task": "by file only",
    }


def run_tokenizer_only(input_path: Path) -> dict:
    import tokenizers

    texts = [json.loads(line)["text"] for path in sorted(input_path.glob("*.jsonl")) for line in path.open()]
    tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    start = time.perf_counter()
    tokens = sum(
        len(e.ids)
        for i in range(0, len(texts), 1000)
        for e in tokenizer.encode_batch(texts[i : i + 1000], add_special_tokens=False)
    )
    return {"seconds": time.perf_counter() - start, "docs": len(texts), "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--copies", type=int, default=1, help="copies of the corpus in the input")
    parser.add_argument("--files", type=int, default=1, help="split the input into this many files")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (outputs, logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpt-bench-"))
    try:
        input_path, rows = make_input(work, args.copies, args.files)
        size = sum(p.stat().st_size for p in input_path.glob("*.jsonl"))
        print(
            f"input: {rows} documents in {args.files} file(s) ({size / 1e6:.1f} MB), {args.workers} workers, "
            f"{os.cpu_count()} cores"
        )
        results = {
            "tokenizer only": run_tokenizer_only(input_path),
            "kubecpt": run_kubecpt(input_path, work, args.workers),
            "datatrove": run_datatrove(input_path, work, args.workers),
        }
        for name, r in results.items():
            kept = f", kept {r['kept']}" if "kept" in r else ""
            print(
                f"{name:>15}: {r['seconds']:7.2f} s  {r['docs'] / r['seconds']:9.0f} docs/s  "
                f"{r['tokens'] / r['seconds']:11.0f} tokens/s  ({r['docs']} docs{kept}, {r['tokens']} tokens)"
            )
            if r.get("dropped"):
                print(f"{'':>17}dropped by filters: {r['dropped']}")
        ours, peer, raw = results["kubecpt"], results["datatrove"], results["tokenizer only"]
        print(f"kubecpt / datatrove: {peer['seconds'] / ours['seconds']:.2f}x (wall time, same input and workers)")
        share = (ours["tokens"] / ours["seconds"]) / (raw["tokens"] / raw["seconds"])
        print(f"kubecpt / tokenizer-only pass: {share:.2f} of its tokens/s")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
