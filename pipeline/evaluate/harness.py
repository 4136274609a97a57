"""Benchmarks through lm-evaluation-harness (its Python API), on one model directory.

Tasks run with their pinned `numFewshot` and report the metric chosen per task. With
`evaluation.localTaskDir`, the shipped local tasks (`tasks/*.yaml`) are rendered against that data
directory and replace the hub-backed stock tasks of the same names, so evaluation runs fully offline. A
task YAML of the user's own in that directory (`<localTaskDir>/<name>.yaml`, `__DATA__` standing for the
directory) is used as it is and wins over a shipped one of the same name.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cpt.api.evaluation import Task
from cpt_pipeline import jsonl
from cpt_pipeline.hf_loading import adds_bos, document_start, load_tokenizer
from cpt_pipeline.train.ds_config import bf16_native

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PLACEHOLDER = "__DATA__"
SPLIT_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}


class TaskDataError(FileNotFoundError):
    """A local task's data file is missing."""


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def render_tasks(data_dir: Path, names: Iterable[str], target: Path) -> Path:
    """Write the shipped task YAMLs for `names`, reading files under data_dir, into target.

    Each task declares the stock task's splits; splits whose file is absent are left out, so lm-eval picks
    the split it would pick for the stock task with the same files (test over validation; few-shot examples
    from train when present). `mmlu` becomes a group of one task per subject found in the data, as the
    stock MMLU is, each with its subject's description line and its subject's few-shot examples.
    """
    data_dir = data_dir.resolve()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS_DIR / "local_utils.py", target / "local_utils.py")
    for name in names:
        own = data_dir / f"{name}.yaml"
        if own.is_file():
            (target / own.name).write_text(own.read_text().replace(PLACEHOLDER, str(data_dir)))
            continue
        template = TASKS_DIR / f"{name}.yaml"
        if not template.exists():
            raise TaskDataError(
                f"no local task {name!r} (shipped: {', '.join(shipped_tasks())}, or {own}); use a hub task "
                f"by leaving evaluation.localTaskDir unset, or write {own}"
            )
        if name == "mmlu":
            _render_mmlu(data_dir, template.read_text(), target)
        else:
            (target / f"{name}.yaml").write_text(_with_present_splits(template.read_text(), name, data_dir))
    return target


def _with_present_splits(text: str, name: str, data_dir: Path) -> str:
    """The template with __DATA__ filled in and the splits whose file is missing removed."""
    present = [split for split in SPLIT_KEYS if (data_dir / name / f"{split}.jsonl").exists()]
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        split = next((s for s in SPLIT_KEYS if stripped == f"{s}: {PLACEHOLDER}/{name}/{s}.jsonl"), None)
        split = split or next((s for s, key in SPLIT_KEYS.items() if stripped == f"{key}: {s}"), None)
        if split is None or split in present:
            lines.append(line)
    declared = [s for s in ("validation", "test") if f"{SPLIT_KEYS[s]}: {s}" in text]
    if not any(split in present for split in declared):
        files = " or ".join(str(data_dir / name / f"{split}.jsonl") for split in declared)
        raise TaskDataError(
            f"task {name}: data file {files} not found "
            f"(expected the standard layout under {data_dir}, see tasks/README.md)"
        )
    return "\n".join(lines).replace(PLACEHOLDER, str(data_dir)) + "\n"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return jsonl.records(path.read_bytes())


def _render_mmlu(data_dir: Path, template: str, target: Path) -> None:
    """One task per subject (data split by the `subject` field into target/mmlu/<subject>/) and the group."""
    test, dev = data_dir / "mmlu" / "test.jsonl", data_dir / "mmlu" / "dev.jsonl"
    if not test.exists():
        if not dev.exists():
            raise TaskDataError(
                f"task mmlu: data file {test} not found (expected the standard layout under {data_dir}, "
                "see tasks/README.md)"
            )
        log.warning("mmlu: %s not found, evaluating %s", test, dev)
        test = dev
    splits = {"test": _read_jsonl(test), "dev": _read_jsonl(dev) if dev.exists() else []}
    if any("subject" not in row for rows in splits.values() for row in rows):
        raise TaskDataError(f"task mmlu: every row of {test} and {dev} needs a 'subject' field (the MMLU layout)")
    subjects = sorted({row["subject"] for row in splits["test"]})
    for subject in subjects:
        folder = target / "mmlu" / subject
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            chosen = [row for row in rows if row["subject"] == subject]
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen))
        text = template.replace("__SUBJECT_WORDS__", subject.replace("_", " ")).replace("__SUBJECT__", subject)
        if not any(row["subject"] == subject for row in splits["dev"]):  # no few-shot examples for it
            text = "\n".join(
                line
                for line in text.splitlines()
                if line.strip() not in ("fewshot_split: dev",) and "/dev.jsonl" not in line
            )
        (target / f"mmlu_{subject}.yaml").write_text(text.replace(PLACEHOLDER, str(target)))
    group = {
        "group": "mmlu",
        "task": [f"mmlu_{subject}" for subject in subjects],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    (target / "mmlu.yaml").write_text(json.dumps(group, indent=1))


def run_tasks(
    model_dir: str,
    tasks: list[Task],
    local_data: Path | None = None,
    batch_size: str = "auto",
    device: str | None = None,
    seed: int = 1234,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """lm-eval results for every task: {"results": {task: {metric,filter: value}}, "configs": ..., ...}."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = eval_dtype(device)
    args = model_args(model_dir, dtype, tokenizer, trust_remote_code)
    if device != "cuda" and batch_size == "auto":
        batch_size = "8"
    merged: dict[str, Any] = {"results": {}, "configs": {}, "n-samples": {}, "versions": {}}
    with tempfile.TemporaryDirectory(prefix="kubecpt-tasks-") as scratch:
        manager = (
            TaskManager(
                include_path=str(render_tasks(local_data, [t.name for t in tasks], Path(scratch))),
                include_defaults=False,
            )
            if local_data
            else TaskManager()
        )
        groups: dict[tuple[int, int | None], list[str]] = {}
        for task in tasks:
            groups.setdefault((task.num_fewshot, task.limit), []).append(task.name)
        for (fewshot, limit), names in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
            log.info("lm-eval: %s, %d-shot, limit %s, on %s (%s, %s)", names, fewshot, limit, model_dir, device, dtype)
            out = simple_evaluate(
                model="hf",
                model_args=args,
                tasks=names,
                num_fewshot=fewshot,
                limit=limit,
                batch_size=batch_size,
                device=device,
                task_manager=manager,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
            for key in merged:
                merged[key].update(out.get(key, {}))
    return merged


def eval_dtype(device: str, native_bf16: Callable[[], bool] = bf16_native) -> str:
    """The dtype lm-eval loads the model in: bf16 where the GPU computes it natively, fp16 on a GPU that only
    emulates bf16 (V100, T4: as training falls back), fp32 on the CPU."""
    if device != "cuda":
        return "float32"
    return "bfloat16" if native_bf16() else "float16"


def model_args(model_dir: str, dtype: str, tokenizer: Any = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """lm-eval's HFLM arguments: the model's own code only when trusted, and the tokenizer training's shards were
    made with (given, else the model's own), starting documents with BOS exactly when that tokenizer adds it."""
    tokenizer = tokenizer or load_tokenizer(Path(model_dir), trust_remote_code)
    return {
        "pretrained": model_dir,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "tokenizer": tokenizer,
        "add_bos_token": adds_bos(tokenizer),
        "prefix_token_id": document_start(tokenizer),
    }


def metric_filter(values: dict[str, Any], task: Task) -> str:
    """The filter of task.metric to report: task.filter, else "none", else the first one lm-eval reported.

    lm-eval keys results `<metric>,<filter>`: "acc,none" for plain tasks, "exact_match,strict-match" and
    "exact_match,flexible-extract" for generative ones with answer-extraction filters.
    """
    filters = [k.split(",", 1)[1] for k in values if "," in k and k.split(",", 1)[0] == task.metric]
    wanted = task.filter or ("none" if "none" in filters else (filters[0] if filters else "none"))
    if wanted not in filters:
        reported = sorted(k for k in values if "," in k and "_stderr" not in k)
        raise KeyError(f"task {task.name!r} has no metric {task.metric!r} with filter {wanted!r} (has: {reported})")
    return wanted


def scores(results: dict[str, Any], tasks: list[Task]) -> list[dict[str, Any]]:
    """[{task, metric, score, stderr}] with the metric chosen per task."""
    out = []
    for task in tasks:
        values = results["results"].get(task.name)
        if values is None:
            raise KeyError(f"lm-eval returned no result for task {task.name!r}")
        chosen = metric_filter(values, task)
        key = f"{task.metric},{chosen}"
        stderr = values.get(f"{task.metric}_stderr,{chosen}")
        out.append(
            {
                "task": task.name,
                "metric": task.metric if chosen == "none" else f"{task.metric},{chosen}",
                "score": float(values[key]),
                "stderr": float(stderr) if isinstance(stderr, int | float) else None,
            }
        )
    return out
