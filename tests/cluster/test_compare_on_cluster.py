"""`cpt compare -l LABEL` against the real API server: the quickstart's replay sweep applied as `cpt sweep` writes
it, each run's status.evaluation patched as the evaluation Jobs push it (the same function builds it), then
listed by the sweep's label with the kubeconfig and compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cpt.kube_yaml import dump, load_all
from cpt_pipeline.evaluate.results import status_summary
from tests.cluster.cluster import Cluster
from tests.cpt.test_cli import REPO

QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
CPT = str(Path(sys.executable).parent / "cpt")


def _summaries(general_after: float, story_after: float) -> list[dict]:
    def summary(tokens: int, domain: float, general: float, story: float) -> dict:
        scores = [
            {"task": "science_quiz", "metric": "acc", "score": 0.25 if tokens == 0 else 0.81, "stderr": 0.07},
            {"task": "story_quiz", "metric": "acc", "score": story, "stderr": 0.05},
        ]
        average = sum(s["score"] for s in scores) / 2
        perplexity = {"domain": {"perplexity": domain}, "general": {"perplexity": general}}
        return {"tokens": tokens, "scores": scores, "average": average, "perplexity": perplexity, "resultsUri": None}

    return [summary(0, 17541.6, 2.015, 1.0), summary(1_638_400, 1.21, general_after, story_after)]


def _cpt(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPT, *args], capture_output=True, text=True, env=cluster.env(), timeout=120, cwd=REPO)


def test_compare_lists_a_sweep_by_its_label_on_the_cluster(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = crd_installed
    result = _cpt(cluster, "sweep", str(QUICKSTART), "--set", "data.replay.fraction=0,0.25", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path))
    statuses = {"quickstart-fraction-0": _summaries(187646.2, 0.81), "quickstart-fraction-0-25": _summaries(1.86, 1.0)}
    for name, summaries in statuses.items():
        patch = json.dumps({"status": {"evaluation": status_summary(summaries)}})
        cluster.kubectl("patch", "cpt", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    other = load_all((tmp_path / "quickstart-fraction-0.yaml").read_text())[0]  # another sweep's run
    other["metadata"]["name"], other["metadata"]["labels"]["cpt.kubecpt.dev/sweep"] = "unrelated", "another"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=dump(other))

    result = _cpt(cluster, "compare", "-l", "cpt.kubecpt.dev/sweep=quickstart", "-n", namespace, "--plot",
                  str(tmp_path / "frontier.svg"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:5]]
    assert [r[:5] for r in rows] == [
        ["quickstart-fraction-0", "0", "0", "0.2500", "1.0000"],
        ["quickstart-fraction-0", "0", "1,638,400", "0.8100", "0.8100"],
        ["quickstart-fraction-0-25", "0.25", "0", "0.2500", "1.0000"],
        ["quickstart-fraction-0-25", "0.25", "1,638,400", "0.8100", "1.0000"],
    ]
    assert rows[1][-4:] == ["14,497x", "lower", "93,125x", "higher"] and rows[3][-1] == "-7.7%"
    assert "unrelated" not in result.stdout and ">replay 0.25, 1.64M<" in (tmp_path / "frontier.svg").read_text()

    result = _cpt(cluster, "compare", "-l", "cpt.kubecpt.dev/sweep=nothing", "-n", namespace)
    assert result.returncode == 1 and result.stderr == (
        f"cpt compare: -l {'cpt.kubecpt.dev/sweep=nothing'}: no ContinuedPretrain with this label in namespace "
        f"{namespace}\n"
    )
