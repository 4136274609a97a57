"""manifests/examples/tiny-cpu.yaml pointed at the shared data, with a budget in steps: the `cpt run` tests' run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cpt.kube_yaml import dump
from tests.conftest import REPO, shared_data_dir

STEP = 2048  # tokens per optimizer step: 1 process x 8 rows x 256 tokens


def tiny_cpu_run(tmp_path: Path, budget_steps: int, milestone_steps: list[int], **training: Any) -> Path:
    """Write the run's YAML into tmp_path (storage under tmp_path/run); `training` adds spec.training fields."""
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    shared = shared_data_dir()
    spec = doc["spec"]
    spec["model"]["uri"] = str(shared / "models" / "stories260K")
    spec["data"]["sources"][0]["uri"] = str(shared / "corpora" / "openstax_stem.jsonl")
    spec["data"]["replay"]["source"]["uri"] = str(shared / "corpora" / "stories260k_samples.jsonl")
    spec["data"].update(tokenBudget=STEP * budget_steps, milestones=[STEP * m for m in milestone_steps])
    spec["training"].update(training)
    spec["evaluation"]["localTaskDir"] = str(shared / "benchmarks")
    spec["evaluation"]["tasks"] = [{"name": "arc_easy", "metric": "acc_norm", "limit": 10}]
    spec["evaluation"]["perplexity"] = {
        "domain": {"uri": str(shared / "corpora" / "openstax_stem.jsonl"), "maxDocuments": 2},
        "general": {"uri": str(shared / "corpora" / "stories260k_samples.jsonl"), "maxDocuments": 5},
    }
    spec["storage"]["uri"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(dump(doc))
    return path
