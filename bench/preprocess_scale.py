"""Preprocessing at the paper's scale: preprocess + partitioned dedup (MinHash on) against a tokenizer-only pass.

Input, built deterministically from the shared OpenStax corpus: its paragraphs regrouped into documents of
about 4,000 characters (copy c shuffles them with seed c, so every document is new), then 10% of them again
verbatim (exact duplicates) and 10% with one word in 80 changed (near duplicates), until the input holds
`--tokens` tokens. The pipeline runs as `cpt run` runs it: the stages' own argv, one process per worker and
per dedup partition, JOB_COMPLETION_INDEX set. The tokenizer-only pass encodes the same texts with the
pipeline's tokenizer (the backend TextTokenizer chose) on as many threads as the pipeline has workers.
Printed: both throughputs and their ratio (goal >= 0.80x), and every process's peak RSS (VmHWM).

    .venv/bin/python -P bench/preprocess_scale.py --tokens 25000000 [--workers 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_spec import REPO, SHARED, TOKENIZER, write_preprocess_spec

DOC_CHARS = 4000
FILES = 16


def near_copy(text: str) -> str:
    """One word in 80 changed: a near duplicate (Jaccard of 5-word shingles about 0.88), never an exact one."""
    return " ".join(w + "s" if i % 80 == 7 else w for i, w in enumerate(text.split(" ")))


def documents(paragraphs: list[str], copy: int) -> list[str]:
    """The paragraphs shuffled with seed `copy` and grouped into documents of about DOC_CHARS characters."""
    order = list(paragraphs)
    random.Random(copy).shuffle(order)
    docs, current, size = [], [], 0
    for paragraph in order:
        current.append(paragraph)
        size += len(paragraph)
        if size >= DOC_CHARS:
            docs.append("\n".join(current))
            current, size = [], 0
    return docs


def make_input(folder: Path, tokens: int, chars_per_token: float) -> dict[str, int]:
    """jsonl files holding about `tokens` tokens: new documents plus 10% exact and 10% near copies."""
    texts = [json.loads(line)["text"] for line in (SHARED / "corpora" / "openstax_stem.jsonl").open()]
    paragraphs = [p for text in texts for p in text.split("\n") if p.strip()]
    rng = random.Random(0)
    rows: list[str] = []
    counts = {"documents": 0, "exact copies": 0, "near copies": 0}
    chars, copy = 0, 0
    while chars < tokens * chars_per_token:
        for doc in documents(paragraphs, copy):
            rows.append(doc)
            counts["documents"] += 1
            pick = rng.random()
            if pick < 0.1:
                rows.append(doc)
                counts["exact copies"] += 1
            elif pick < 0.2:
                rows.append(near_copy(doc))
                counts["near copies"] += 1
            chars += len(doc) + len(rows[-1]) * (pick < 0.2)
            if chars >= tokens * chars_per_token:
                break
        copy += 1
    folder.mkdir(parents=True)
    handles = [(folder / f"part-{f:03d}.jsonl").open("w", encoding="utf-8") for f in range(FILES)]
    for i, text in enumerate(rows):
        handles[i * FILES // len(rows)].write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    for handle in handles:
        handle.close()
    return counts


def chars_per_token() -> float:
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    texts = [json.loads(line)["text"] for line in (SHARED / "corpora" / "openstax_stem.jsonl").open()][:100]
    return sum(map(len, texts)) / sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))


def tokenizer_only(folder: Path, threads: int) -> dict[str, float | str]:
    """Encode every text (reading not counted) with the pipeline's own tokenizer and backend on `threads` threads."""
    from cpt_pipeline.preprocess.tokenize import TextTokenizer

    paths = sorted(folder.glob("*.jsonl"))
    sample = [json.loads(line)["text"] for line in paths[0].open(encoding="utf-8")][:64]
    tokenizer = TextTokenizer(str(TOKENIZER), sample=sample, threads=threads)
    seconds, cpu, tokens = 0.0, 0.0, 0
    for path in paths:
        texts = [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
        start, start_cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
        for i in range(0, len(texts), 1000):
            tokens += sum(map(len, tokenizer.encode_batch(texts[i : i + 1000])))
        seconds += time.perf_counter() - start
        cpu += _cpu(resource.RUSAGE_SELF) - start_cpu
    return {"seconds": seconds, "cpu": cpu, "tokens": tokens, "backend": tokenizer.info.backend}


def _cpu(who: int | resource.struct_rusage) -> float:
    """User + system CPU seconds (of this process and its threads, or of one rusage)."""
    usage = resource.getrusage(who) if isinstance(who, int) else who
    return usage.ru_utime + usage.ru_stime


def write_spec(work: Path, folder: Path, workers: int) -> Path:
    return write_preprocess_spec(
        work / "scale.yaml", folder, work / "out", workers, dedup={"minhash": {"enabled": True}}
    )


def run_stage(stage: str, spec_path: Path, workers: int, processes: int) -> tuple[float, float, list[float]]:
    """The stage's processes as the local runner starts them; wall seconds, CPU seconds of all of them, and each
    one's peak RSS (MiB)."""
    from cpt.stages import Stage, stage_argv
    from cpt_pipeline.__main__ import INDEX_ENV
    from cpt_pipeline.local import QUIET_ENV

    argv = stage_argv(Stage(stage), str(spec_path), python=sys.executable, extra=["--world-size", str(workers)])
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    env = {**os.environ, **QUIET_ENV, "RAYON_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    start = time.perf_counter()
    running = [
        subprocess.Popen(argv, env={**env, INDEX_ENV: str(i)}, cwd=REPO, stdout=subprocess.DEVNULL)
        for i in range(processes)
    ]
    high = {child.pid: 0 for child in running}
    watch = threading.Thread(target=_watch_peaks, args=(high,), daemon=True)
    watch.start()
    cpu = 0.0
    for child in running:
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"{stage} process {child.args} exited with status {status}")
        cpu += _cpu(usage)
    watch.join()
    return time.perf_counter() - start, cpu, [high[child.pid] / 1024 for child in running]


def _watch_peaks(high: dict[int, int]) -> None:
    """Each process's VmHWM (KiB), read from /proc until it exits. wait4's ru_maxrss is not used: a child
    inherits it from this process at fork, before its exec, so it would report this process's size."""
    alive = set(high)
    while alive:
        for pid in list(alive):
            try:
                lines = Path(f"/proc/{pid}/status").read_text().split("\n")
                high[pid] = max(high[pid], next(int(x.split()[1]) for x in lines if x.startswith("VmHWM:")))
            except (OSError, StopIteration):  # exited (or a zombie without memory): its last value stands
                alive.discard(pid)
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=float, default=25e6, help="tokens in the input (default 25M)")
    parser.add_argument("--workers", type=int, default=2, help="preprocess workers (and dedup partitions)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpt-scale-"))
    try:
        counts = make_input(work / "input", int(args.tokens), chars_per_token())
        raw = tokenizer_only(work / "input", args.workers)
        spec_path = write_spec(work, work / "input", args.workers)
        pre_seconds, pre_cpu, pre_peaks = run_stage("preprocess", spec_path, args.workers, args.workers)
        dedup_seconds, dedup_cpu, dedup_peaks = run_stage("dedup", spec_path, args.workers, args.workers)
        status = json.loads((work / "out" / "data" / "preprocess-status.json").read_text())
        ours = raw["tokens"] / (pre_seconds + dedup_seconds)
        theirs = raw["tokens"] / raw["seconds"]
        size = sum(p.stat().st_size for p in (work / "input").glob("*.jsonl"))
        print(
            f"input: {raw['tokens'] / 1e6:.1f}M tokens, {sum(counts.values())} documents ({size / 1e6:.0f} MB; "
            f"{counts['exact copies']} exact and {counts['near copies']} near copies planted), "
            f"{args.workers} workers, {args.workers} dedup partitions, {os.cpu_count()} cores"
        )
        print(
            f"tokenizer only ({raw['backend']}, {args.workers} threads): {theirs:,.0f} tokens/s "
            f"({raw['seconds']:.1f} s)"
        )
        print(
            f"preprocess + dedup (MinHash on): {ours:,.0f} tokens/s (preprocess {pre_seconds:.1f} s, "
            f"dedup {dedup_seconds:.1f} s); kept {status['docsKept']} documents, removed {status['duplicates']} "
            "duplicates"
        )
        print(f"preprocess + dedup / tokenizer only: {ours / theirs:.2f}x (goal >= 0.80x)")
        cpu_ratio = raw["cpu"] / (pre_cpu + dedup_cpu)
        print(
            f"per CPU-second (robust to other load on the machine): tokenizer only {raw['tokens'] / raw['cpu']:,.0f}, "
            f"preprocess + dedup {raw['tokens'] / (pre_cpu + dedup_cpu):,.0f} tokens/s ({pre_cpu:.0f} + "
            f"{dedup_cpu:.0f} CPU s): {cpu_ratio:.2f}x"
        )
        print(
            "peak RSS (MiB): "
            + ", ".join(f"preprocess worker {i} {m:.0f}" for i, m in enumerate(pre_peaks))
            + ", "
            + ", ".join(f"dedup partition {i} {m:.0f}" for i, m in enumerate(dedup_peaks))
        )
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
