"""The forgetting guardrail on the real control plane: an evaluation pod (played by this test, with the pipeline's
own push code and the run's own token) pushes a milestone's verdict over the budget while the training gang runs;
under action stop the operator fails the run with reason ForgettingBudgetExceeded, no pod of the run is left, and
Events say why. The trainer's side (waiting for each verdict, no step after a breach) is the same code locally and
in a pod, and is tested by tests/test_guardrail_quickstart.py on a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpt.api.evaluation import Guardrail
from tests.cluster.helpers import eventually
from tests.operator import test_operator_on_cluster as base
from tests.operator.process import Operator
from tests.operator.test_operator_faults_on_cluster import live_pods
from tests.operator.test_operator_on_cluster import get, phase_is, run_doc

crds, operator = base.crds, base.operator  # the fixtures: the CRDs applied, the operator as a process
RUN = "cpt.kubecpt.dev/run"
BUDGET = {"benchmarks": [{"task": "piqa", "maxDrop": "0.05"}], "action": "stop"}
FIRST = "tokens-0000400000000"  # run_doc(): a milestone at 400M


def summary(name: str, tokens: int, piqa: float) -> dict[str, Any]:
    return {
        "name": name,
        "tokens": tokens,
        "scores": [{"task": "piqa", "metric": "acc_norm", "score": piqa, "stderr": 0.01}],
        "average": piqa,
        "perplexity": {},
        "resultsUri": f"s3://runs/t/eval/{name}/results.json",
    }


def as_a_stage_pod(cluster: Any, namespace: str, run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process set up as one of the run's stage pods: the env the operator gives them, the run's own token."""
    token = cluster.kubectl("create", "token", f"{run}-status", "-n", namespace).stdout.strip()
    (tmp_path / "token").write_text(token)
    monkeypatch.setenv("KUBECPT_RUN", f"{namespace}/{run}")
    monkeypatch.setenv("KUBECPT_API_SERVER", cluster.server)
    monkeypatch.setenv("KUBECPT_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("KUBECPT_CA_FILE", str(cluster.pki.ca_cert))


def test_a_breach_under_stop_ends_the_run_and_stops_the_gang(
    operator: Operator, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpt_pipeline.evaluate.results import push_evaluation

    cluster = operator.cluster
    doc = run_doc("guarded", training={"extraEnv": {"TEST_HOLD": "1"}}, evaluation={"guardrail": BUDGET})
    cluster.apply({**doc, "metadata": {"name": "guarded", "namespace": namespace}})

    def training() -> list[str] | None:
        pods = get(cluster, namespace, "pods", "-l", f"{RUN}=guarded,cpt.kubecpt.dev/stage=train")["items"]
        return [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"] or None

    eventually(training, timeout=90, what="training pods running")
    as_a_stage_pod(cluster, namespace, "guarded", tmp_path, monkeypatch)
    guardrail = Guardrail.model_validate(BUDGET)
    assert push_evaluation([summary("baseline", 0, 0.60)], "baseline", guardrail)
    run = get(cluster, namespace, "cpt", "guarded")
    assert run["status"]["phase"] == "Training" and not run["status"]["evaluation"].get("guardrail", {}).get("breached")

    assert push_evaluation([summary(FIRST, 400_000_000, 0.50)], FIRST, guardrail)  # piqa -0.10: over the budget
    run = eventually(lambda: phase_is(cluster, namespace, "guarded", "Failed"), timeout=60, what="Failed")
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ForgettingBudgetExceeded" and "piqa 0.6 -> 0.5" in failed["message"]
    assert run["status"]["evaluation"]["guardrail"]["breachedAt"] == 400_000_000
    assert "recommendedExport" not in run["status"]  # the first milestone already exceeded it
    eventually(lambda: live_pods(cluster, namespace, "guarded") == [], timeout=30, what="every pod of the run gone")
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=guarded")["items"]
    reasons = {(e["type"], e["reason"]) for e in events}
    assert {("Warning", "ForgettingBudgetExceeded"), ("Warning", "Stopped")} <= reasons, reasons
