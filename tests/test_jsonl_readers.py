"""JSON lines are split on "\\n" only: records whose strings hold U+0085, U+2028 or U+2029 raw (valid JSON,
as `ensure_ascii=False` writes them; the real MMLU test set has U+0085) pass through every reader whole, and
no product code calls `splitlines()` on JSON-lines text."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from types import ModuleType

from cpt.api.evaluation import TextSet
from cpt_pipeline.evaluate.harness import render_tasks
from cpt_pipeline.evaluate.perplexity import read_texts
from cpt_pipeline.preprocess.decontam import Decontaminator
from cpt_pipeline.preprocess.held_out import HELD_OUT_PATH, HeldOutWriter, merge
from cpt_pipeline.preprocess.readers import Document
from cpt_pipeline.report.report import build_report
from cpt_pipeline.storage import Storage
from cpt_pipeline.train.progress import Progress

REPO = Path(__file__).resolve().parent.parent
BREAKS = ["\u0085", "\u2028", "\u2029"]
TEXTS = [f"first part{c}second part of document {i} with enough words to form n grams" for i, c in enumerate(BREAKS)]

# splitlines() calls that do not read JSON lines: (file, function, the expression split) -> why it is fine
ALLOWED = {
    ("pipeline/evaluate/harness.py", "_with_present_splits", "text"): "a shipped task YAML template",
    ("pipeline/evaluate/harness.py", "_render_mmlu", "text"): "the shipped MMLU task YAML template",
    ("bench/operator_scale.py", "proc_status", "Path(f'/proc/{pid}/status').read_text()"): "/proc status lines",
}


def raw_jsonl(rows: list[dict]) -> str:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    assert all(c in text for c in BREAKS)  # written raw, as a user's file or our own writers have them
    return text


def test_the_mmlu_renderer_keeps_each_question_whole(tmp_path: Path) -> None:
    rows = [{"question": t, "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 0} for t in TEXTS]
    (tmp_path / "data" / "mmlu").mkdir(parents=True)
    (tmp_path / "data" / "mmlu" / "test.jsonl").write_text(raw_jsonl(rows), encoding="utf-8")
    (tmp_path / "data" / "mmlu" / "dev.jsonl").write_text(raw_jsonl(rows[:3]), encoding="utf-8")
    render_tasks(tmp_path / "data", ["mmlu"], tmp_path / "out")
    rendered = (tmp_path / "out" / "mmlu" / "anatomy" / "test.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line) for line in rendered.split("\n") if line] == rows


def test_perplexity_sets_read_each_document_whole(tmp_path: Path) -> None:
    path = tmp_path / "general.jsonl"
    path.write_text(raw_jsonl([{"text": t} for t in TEXTS]), encoding="utf-8")
    assert read_texts(TextSet(uri=str(path))) == TEXTS


def test_the_held_out_merge_reads_what_the_workers_wrote_and_perplexity_reads_the_merge(tmp_path: Path) -> None:
    scratch = tmp_path / "rank0"
    scratch.mkdir()
    writer = HeldOutWriter(scratch, limit=10)
    for position, text in enumerate(TEXTS):
        writer.add(Document(text=text, unit=0, position=position, location="a.jsonl"), "a")
    writer.close()
    storage = Storage.open_uri(str(tmp_path / "run"))
    assert merge([Storage.open_uri(str(scratch))], storage, limit=10, weights={"a": 1}) == len(TEXTS)
    merged = Path(storage.root, *HELD_OUT_PATH)
    assert read_texts(TextSet(uri=str(merged))) == TEXTS


def test_decontamination_indexes_each_evaluation_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "task" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(raw_jsonl([{"question": t} for t in TEXTS]), encoding="utf-8")
    index = Decontaminator.from_files([path], n=5)
    assert index.contaminated("words before: second part of document 2 with enough words, and after")


def metrics(tmp_path: Path) -> Storage:
    storage = Storage.open_uri(str(tmp_path / "run"))
    rows = [{"step": s, "tokens": 100 * s, "loss": 3.0 - s / 10, "lr": 1e-3, "note": BREAKS[s - 1]} for s in (1, 2, 3)]
    storage.write_text(raw_jsonl(rows), "train", "metrics.jsonl")
    return storage


def test_training_progress_reads_its_history_on_resume(tmp_path: Path) -> None:
    storage = metrics(tmp_path)
    progress = Progress(storage, 4, 100, 1.0, None, 1, 1, None)
    progress.start(resumed_step=2)
    assert [(r["step"], r["note"]) for r in progress.history] == [(1, BREAKS[0]), (2, BREAKS[1])]


def test_the_report_reads_the_training_history(tmp_path: Path) -> None:
    storage = metrics(tmp_path)
    scores = [{"task": "arc_easy", "metric": "acc", "score": 0.5, "stderr": 0.01}]
    summary = {"name": "baseline", "tokens": 0, "model": "m", "scores": scores, "average": 0.5}
    storage.write_json(summary, "eval", "baseline", "summary.json")
    build_report(storage)
    assert (Path(storage.root) / "report" / "loss.png").stat().st_size > 0


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_forgetting_bench_reads_each_held_out_document_whole(tmp_path: Path) -> None:
    path = tmp_path / "held.jsonl"
    path.write_text(raw_jsonl([{"text": t} for t in TEXTS]), encoding="utf-8")
    assert bench_module("forgetting").read_texts(path) == TEXTS


class _SplitlinesCalls(ast.NodeVisitor):
    """(file, innermost enclosing function, the expression split) of every `.splitlines()` call."""

    def __init__(self, path: str) -> None:
        self.path, self.function, self.found = path, "<module>", set[tuple[str, str, str]]()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "splitlines":
            self.found.add((self.path, self.function, ast.unparse(node.func.value)))
        self.generic_visit(node)


def splitlines_calls() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for folder in ("cpt", "pipeline", "operator", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            visitor = _SplitlinesCalls(str(path.relative_to(REPO)))
            visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
            found |= visitor.found
    return found


def test_no_product_code_splits_json_lines_with_splitlines() -> None:
    calls = splitlines_calls()
    unexplained = sorted(calls - ALLOWED.keys())
    assert not unexplained, (
        f"splitlines() also splits on U+0085/U+2028/U+2029, which JSON keeps raw in strings: use "
        f"cpt_pipeline.jsonl.lines() for JSON lines, or add a reason to ALLOWED: {unexplained}"
    )
    assert not ALLOWED.keys() - calls, f"stale ALLOWED entries: {sorted(ALLOWED.keys() - calls)}"
