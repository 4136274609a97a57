"""Benchmarks through lm-evaluation-harness (its Python API), on one model directory.

Tasks run with their pinned `numFewshot` and report the metric chosen per task. With
`evaluation.localTaskDir`, the shipped local tasks (`tasks/*.yaml`) are rendered against that data
directory and replace the hub-backed stock tasks of the same names, so evaluation runs fully offline.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cpt.api.evaluation import Task

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PLACEHOLDER = "__DATA__"
FALLBACK_FILES = {"mmlu/test.jsonl": "mmlu/dev.jsonl"}  # no test split: evaluate the dev examples


class TaskDataError(FileNotFoundError):
    """A local task's data file is missing."""


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def render_tasks(data_dir: Path, names: Iterable[str], target: Path) -> Path:
    """Write the shipped task YAMLs for `names`, reading files under data_dir, into target."""
    data_dir = data_dir.resolve()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS_DIR / "local_utils.py", target / "local_utils.py")
    for name in names:
        template = TASKS_DIR / f"{name}.yaml"
        if not template.exists():
            raise TaskDataError(
                f"no local task {name!r} (shipped: {', '.join(shipped_tasks())}); use a hub task "
                "by leaving evaluation.localTaskDir unset, or add a YAML to the task directory"
            )
        text = template.read_text()
        for relative, fallback in FALLBACK_FILES.items():
            if (
                f"{PLACEHOLDER}/{relative}" in text
                and not (data_dir / relative).exists()
                and (data_dir / fallback).exists()
            ):
                log.warning("%s: %s not found, evaluating %s", name, data_dir / relative, data_dir / fallback)
                text = text.replace(f"{PLACEHOLDER}/{relative}", f"{PLACEHOLDER}/{fallback}")
        text = text.replace(PLACEHOLDER, str(data_dir))
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.endswith(".jsonl") and ": " in stripped and not Path(stripped.split(": ", 1)[1]).exists():
                raise TaskDataError(
                    f"task {name}: data file {stripped.split(': ', 1)[1]} not found "
                    f"(expected the standard layout under {data_dir}, see tasks/README.md)"
                )
        (target / f"{name}.yaml").write_text(text)
    return target


def run_tasks(
    model_dir: str,
    tasks: list[Task],
    local_data: Path | None = None,
    batch_size: str = "auto",
    device: str | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """lm-eval results for every task: {"results": {task: {metric,filter: value}}, "configs": ..., ...}."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
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
                model_args={"pretrained": model_dir, "dtype": dtype},
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
