"""The operator process against the real control plane: kwok's fake GPU nodes run the stage pods, the Job and
JobSet controllers complete the children, and the operator moves each run through its stages. kwok fails or
evicts a JobSet's first attempt, or reports a missing Secret, when a test's run asks for it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from cpt.api import ContinuedPretrain
from cpt.plan import status_plan
from tests.cluster.cluster import Cluster
from tests.cluster.helpers import eventually
from tests.cpt.test_spec import minimal
from tests.operator.process import Operator

if TYPE_CHECKING:
    from cpt_pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
RUNNING: list[Operator] = []  # the operator of the current test, checked at every poll


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("apply", "--server-side", "-f", str(cluster.bin_dir / "crds" / "jobset.x-k8s.io_jobsets.yaml"))
    for crd in ("continuedpretrains.cpt.kubecpt.dev", "jobsets.jobset.x-k8s.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    return cluster


@pytest.fixture
def operator(crds: Cluster, namespace: str, tmp_path: Path):
    running = Operator(crds, namespace, tmp_path / "operator.log")
    running.start()
    RUNNING.append(running)
    yield running
    RUNNING.remove(running)
    running.stop()
    print(running.log.read_text()[-5000:])


def run_doc(name: str, **spec: Any) -> dict[str, Any]:
    doc = minimal()
    doc["metadata"]["name"] = name
    doc["spec"]["data"]["preprocessing"] = {"workers": 2}
    doc["spec"].update(spec)
    return doc


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    if RUNNING:
        RUNNING[-1].alive()
    result = cluster.kubectl("get", *what, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    return next((c["status"] for c in conditions if c["type"] == kind), None)


def test_cpt_render_output_is_accepted_by_the_api_server(crds: Cluster, namespace: str, tmp_path: Path) -> None:
    doc = run_doc("rendered", training={"nodes": 2, "procsPerNode": 4, "resources": {"limits": {"nvidia.com/gpu": 4}}})
    doc["metadata"]["namespace"] = namespace
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    rendered = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "render", str(path)], capture_output=True, text=True, check=True
    ).stdout
    kinds = [obj["kind"] for obj in yaml.safe_load_all(rendered)]
    assert kinds == [
        "ConfigMap",
        *["ServiceAccount", "Role", "RoleBinding"],
        *["Job", "Job", "Job", "JobSet"],  # baseline evaluation, preprocess, dedup, training
        *["Job", "Job", "Job"],  # the two milestone evaluations, the report
    ]
    result = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert "jobset.jobset.x-k8s.io/rendered-train created (server dry run)" in result.stdout


def names(cluster: Cluster, namespace: str, run: str) -> list[str]:
    selector = ["-l", f"cpt.kubecpt.dev/run={run}"]
    kinds = ("jobs", "jobsets", "configmaps")
    return sorted(o["metadata"]["name"] for kind in kinds for o in get(cluster, namespace, kind, *selector)["items"])


def phase_is(cluster: Cluster, namespace: str, run: str, wanted: str) -> dict[str, Any] | None:
    obj = get(cluster, namespace, "cpt", run)
    return obj if obj and obj.get("status", {}).get("phase") == wanted else None


def test_a_run_goes_through_every_stage_to_complete(operator: Operator, namespace: str) -> None:
    """kwok runs every stage pod, the Job and JobSet controllers complete the children, the operator moves on."""
    cluster = operator.cluster
    cluster.apply({**run_doc("flow"), "metadata": {"name": "flow", "namespace": namespace}})
    run = eventually(lambda: phase_is(cluster, namespace, "flow", "Succeeded"), timeout=180, what="Succeeded")
    for kind in ("Complete", "Ready", "DataReady", "BaselineEvaluated", "Trained", "Evaluated", "Reported"):
        assert condition(run, kind) == "True", kind
    assert condition(run, "Reconciling") == "False" and condition(run, "Stalled") == "False"
    assert run["status"]["observedGeneration"] == run["metadata"]["generation"] and run["status"]["completionTime"]
    evaluations = ["flow-eval-baseline", "flow-eval-tokens-0000400000000", "flow-eval-tokens-0001000000000"]
    children = ["flow-dedup", *evaluations, "flow-preprocess", "flow-report"]
    assert names(cluster, namespace, "flow") == sorted([*children, "flow-spec", "flow-train"])
    jobset = get(cluster, namespace, "jobset", "flow-train")
    owner = jobset["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ContinuedPretrain", "flow", True)
    assert jobset["status"].get("restarts", 0) == 0
    preprocess = get(cluster, namespace, "job", "flow-preprocess")
    assert preprocess["spec"]["completionMode"] == "Indexed" and preprocess["status"]["succeeded"] == 2
    pods = get(cluster, namespace, "pods", "-l", "cpt.kubecpt.dev/run=flow,cpt.kubecpt.dev/stage=preprocess")
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods["items"])
    assert indexes == ["0", "1"]
    dedup = get(cluster, namespace, "job", "flow-dedup")  # one index per partition, all done before training
    assert dedup["spec"]["completionMode"] == "Indexed" and dedup["status"]["succeeded"] == 2
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=flow")
    assert {"Created", "DataReady", "BaselineEvaluated", "Trained", "Reported", "Complete"} <= {
        e["reason"] for e in events["items"]
    }

    metrics = operator.scrape()
    assert 'kubecpt_runs{phase="Succeeded"} 1.0' in metrics
    for stage in ("dedup", "train", "evaluate", "report"):  # stages whose completion sets a condition
        assert f'kubecpt_stage_duration_seconds_count{{stage="{stage}"}} 1.0' in metrics, stage
    assert "kubecpt_reconcile_errors_total 0.0" in metrics
    assert operator.scrape(operator.liveness) is not None  # kopf's liveness endpoint answers

    before = names(cluster, namespace, "flow")
    operator.stop()  # a restarted operator finds what exists and creates nothing twice
    offset = len(operator.log.read_text())
    operator.start()
    eventually(lambda: "Handler 'on_run' succeeded" in operator.log.read_text()[offset:], what="a pass after restart")
    assert names(cluster, namespace, "flow") == before

    for kind in ("jobs", "jobsets"):  # a TTL or a person deletes the children: the finished run stays finished
        cluster.kubectl("delete", kind, "-l", "cpt.kubecpt.dev/run=flow", "-n", namespace, "--wait=true")
    cluster.kubectl("annotate", "cpt", "flow", "-n", namespace, "test.kubecpt.dev/poke=1")
    eventually(lambda: operator.log.read_text()[offset:].count("Handler 'on_run' succeeded") >= 2, what="a 2nd pass")
    assert names(cluster, namespace, "flow") == ["flow-spec"]
    assert phase_is(cluster, namespace, "flow", "Succeeded")

    cluster.kubectl("delete", "cpt", "flow", "-n", namespace, "--wait=true", "--timeout=60s")
    eventually(lambda: names(cluster, namespace, "flow") == [], timeout=60, what="children garbage-collected")


def test_kubectl_get_shows_the_expected_duration_before_the_first_step(operator: Operator, namespace: str) -> None:
    """status.plan is written on the first pass, whole (the CRD schema keeps every field), even for a suspended
    run, and kubectl get cpt shows its expected duration."""
    cluster = operator.cluster
    doc = run_doc("planned", suspend=True, training={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    cluster.apply({**doc, "metadata": {"name": "planned", "namespace": namespace}})
    plan = status_plan(ContinuedPretrain.model_validate(doc).spec)
    assert plan["expectedDuration"]
    written = eventually(
        lambda: (get(cluster, namespace, "cpt", "planned") or {}).get("status", {}).get("plan"), what="status.plan"
    )
    assert written == {key: value for key, value in plan.items() if value is not None}
    header, row = cluster.kubectl("get", "cpt", "planned", "-n", namespace).stdout.splitlines()[:2]
    assert plan["expectedDuration"].endswith("(A100-80GB assumed)")  # no node selector: the column says so
    assert row[header.index("EXPECTED") :].startswith(plan["expectedDuration"])  # aligned columns, empty ones blank


def test_suspend_stops_the_running_stage_and_resume_continues(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    doc = run_doc("paused", suspend=True)
    cluster.apply({**doc, "metadata": {"name": "paused", "namespace": namespace}})
    run = eventually(
        lambda: (
            (r := get(cluster, namespace, "cpt", "paused")) and r.get("status", {}).get("phase") == "Suspended" and r
        ),
        what="Suspended phase",
    )
    assert condition(run, "Suspended") == "True" and condition(run, "Reconciling") == "False"
    job = eventually(lambda: get(cluster, namespace, "job", "paused-preprocess"), what="preprocess Job")
    assert job["spec"]["suspend"] is True and not job["status"].get("active")
    cluster.kubectl("patch", "cpt", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    eventually(lambda: get(cluster, namespace, "jobset", "paused-train"), timeout=120, what="resumed to training")
    assert condition(get(cluster, namespace, "cpt", "paused"), "Suspended") == "False"


def test_a_succeeded_runs_grown_budget_continues_it_in_new_children(operator: Operator, namespace: str) -> None:
    """docs/operator.md, "Extending a run": tokenBudget and milestones patched on a Succeeded run (the edit the CEL
    rules allow) make a second segment: new preprocess, dedup, training, evaluation and report children beside the
    old ones, which stay as they were; the phase goes back to Preprocessing, then Succeeded again."""
    cluster = operator.cluster
    cluster.apply({**run_doc("grow"), "metadata": {"name": "grow", "namespace": namespace}})
    eventually(lambda: phase_is(cluster, namespace, "grow", "Succeeded"), timeout=180, what="Succeeded")
    before = {key: o for key, o in children_by_uid(cluster, namespace, "grow").items() if key[0] in ("Job", "JobSet")}
    watch = subprocess.Popen(  # every status write, in order: the phase may pass Preprocessing in a second
        [cluster.binary("kubectl"), "get", "cpt", "grow", "-n", namespace, "-w", "-o", "jsonpath={.status.phase} "],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        data = {"tokenBudget": 2_000_000_000, "milestones": [400_000_000, 1_500_000_000]}
        cluster.kubectl(
            "patch", "cpt", "grow", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"data": data}})
        )

        def continued() -> dict[str, Any] | None:
            run = phase_is(cluster, namespace, "grow", "Succeeded")
            done = (
                run
                and run["status"]["observedGeneration"] == run["metadata"]["generation"]
                and len(run["status"].get("segments", [])) == 2
            )
            return run if done else None

        run = eventually(continued, timeout=120, what="the second segment Succeeded")
    finally:
        watch.terminate()
    phases = (watch.communicate(timeout=10)[0] or "").split()
    assert phases[0] == "Succeeded" and "Preprocessing" in phases and phases[-1] == "Succeeded", phases
    first, second = run["status"]["segments"]
    assert (first["tokenBudget"], first["startStep"], first["endStep"]) == (1_000_000_000, 0, 3125)
    assert (second["tokenBudget"], second["startStep"], second["endStep"]) == (2_000_000_000, 3125, 6250)
    assert second["completionTime"] and condition(run, "Complete") == "True"
    new = [f"grow-{stage}-segment-01" for stage in ("dedup", "preprocess", "report", "train")]
    new += ["grow-eval-tokens-0001500000000", "grow-eval-tokens-0002000000000"]
    after = {key: o for key, o in children_by_uid(cluster, namespace, "grow").items() if key[0] in ("Job", "JobSet")}
    assert sorted(name for _, name in set(after) - set(before)) == sorted(new)
    for key, old in before.items():  # the old children: the same objects, not run again
        assert after[key]["metadata"]["uid"] == old["metadata"]["uid"], key
        assert after[key]["status"].get("succeeded") == old["status"].get("succeeded"), key
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=grow")["items"]
    assert any(e["reason"] == "BudgetExtended" and e["type"] == "Normal" for e in events)


def gang_run(operator: Operator, namespace: str, name: str, env: dict[str, str], max_restarts: int) -> dict[str, Any]:
    """A run whose training pods fail (or are evicted) on the gang's first attempt, as `env` asks kwok to."""
    doc = run_doc(name, training={"extraEnv": env}, runPolicy={"maxRestarts": max_restarts})
    operator.cluster.apply({**doc, "metadata": {"name": name, "namespace": namespace}})

    def finished() -> dict[str, Any] | None:
        run = get(operator.cluster, namespace, "cpt", name)
        return run if run and run.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return eventually(finished, timeout=180, what=f"{name} finished")


def test_a_permanent_exit_code_fails_the_run_at_once(operator: Operator, namespace: str) -> None:
    run = gang_run(operator, namespace, "bad-input", {"TEST_FAIL_FIRST_ATTEMPT": "4"}, max_restarts=3)
    assert run["status"]["phase"] == "Failed" and condition(run, "Stalled") == "True"
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TrainingFailed" and "exit code 4" in failed["message"], failed
    jobset = get(operator.cluster, namespace, "jobset", "bad-input-train")
    assert jobset["status"].get("restarts", 0) == 0  # no retry loop on a permanent error
    assert run["status"]["training"]["restarts"] == 0


def test_a_training_pod_failure_restarts_the_gang_once(operator: Operator, namespace: str) -> None:
    run = gang_run(operator, namespace, "flaky", {"TEST_FAIL_FIRST_ATTEMPT": "1"}, max_restarts=2)
    assert run["status"]["phase"] == "Succeeded", run["status"]["conditions"]
    jobset = get(operator.cluster, namespace, "jobset", "flaky-train")
    assert (jobset["status"]["restarts"], jobset["status"].get("restartsCountTowardsMax")) == (1, 1)
    assert run["status"]["training"]["restarts"] == 1


def test_a_failure_beyond_max_restarts_fails_the_run(operator: Operator, namespace: str) -> None:
    run = gang_run(operator, namespace, "no-retries", {"TEST_FAIL_FIRST_ATTEMPT": "1"}, max_restarts=0)
    assert run["status"]["phase"] == "Failed"
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TrainingFailed", failed


def test_eviction_and_preemption_restart_without_counting(operator: Operator, namespace: str) -> None:
    evicted = gang_run(operator, namespace, "evicted", {"TEST_EVICT_FIRST_ATTEMPT": "1"}, max_restarts=0)
    preempted = gang_run(operator, namespace, "preempted", {"TEST_FAIL_FIRST_ATTEMPT": "75"}, max_restarts=0)
    for run in (evicted, preempted):
        name = run["metadata"]["name"]
        assert run["status"]["phase"] == "Succeeded", (name, run["status"]["conditions"])
        jobset = get(operator.cluster, namespace, "jobset", f"{name}-train")
        assert (jobset["status"]["restarts"], jobset["status"].get("restartsCountTowardsMax", 0)) == (1, 0), name


def play_a_stage_pod(
    cluster: Cluster, namespace: str, run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A suspended run, and this process set up as one of its stage pods (the env the operator gives them, a token
    of the run's own ServiceAccount); returns the token."""
    cluster.apply({**run_doc(run, suspend=True), "metadata": {"name": run, "namespace": namespace}})
    eventually(lambda: get(cluster, namespace, "rolebinding", f"{run}-status"), what="the run's RoleBinding")
    eventually(lambda: phase_is(cluster, namespace, run, "Suspended"), what="Suspended")
    token = cluster.kubectl("create", "token", f"{run}-status", "-n", namespace).stdout.strip()
    (tmp_path / "token").write_text(token)
    assert cluster.pki is not None
    for key, value in {
        "KUBECPT_RUN": f"{namespace}/{run}",
        "KUBECPT_API_SERVER": cluster.server,
        "KUBECPT_TOKEN_FILE": str(tmp_path / "token"),
        "KUBECPT_CA_FILE": str(cluster.pki.ca_cert),
    }.items():
        monkeypatch.setenv(key, value)
    return token


def test_stage_pods_push_their_status_with_the_runs_own_token(
    operator: Operator, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests play a training pod: the pipeline's own push code, with a token of the run's ServiceAccount."""
    import urllib.error
    import urllib.request

    from cpt_pipeline.status_push import push_status, read_status

    cluster = operator.cluster
    cluster.apply({**run_doc("other", suspend=True), "metadata": {"name": "other", "namespace": namespace}})
    token = play_a_stage_pod(cluster, namespace, "pushed", tmp_path, monkeypatch)
    progress = {"step": 7, "tokensSeen": 7168, "loss": 2.5, "totalSteps": 12, "eta": "1m00s"}
    assert push_status("kubecpt-train", {"training": progress})
    run = eventually(lambda: (r := get(cluster, namespace, "cpt", "pushed")) and "training" in r["status"] and r)
    assert {key: run["status"]["training"][key] for key in progress} == progress
    assert run["status"]["phase"] == "Suspended" and condition(run, "Suspended") == "True"  # the operator's, kept
    shown = cluster.kubectl("get", "cpt", "pushed", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    managers = {(m["manager"], m.get("subresource")) for m in json.loads(shown)["metadata"]["managedFields"]}
    assert ("kubecpt-train", "status") in managers

    scores = {  # what the evaluation stage pushes (its status_summary), with a delta against the baseline
        "milestones": [
            {"tokens": 0, "scores": [{"task": "piqa", "metric": "acc_norm", "score": 0.6}], "average": 0.6},
            {
                "tokens": 1024,
                "scores": [{"task": "piqa", "metric": "acc_norm", "score": 0.62, "delta": 0.02}],
                "average": 0.62,
                "averageDelta": 0.02,
            },
        ],
        "latestAverage": 0.62,
    }
    assert push_status("kubecpt-evaluate", {"evaluation": scores})
    run = eventually(lambda: (r := get(cluster, namespace, "cpt", "pushed")) and "evaluation" in r["status"] and r)
    assert run["status"]["evaluation"]["milestones"][1]["scores"][0]["delta"] == 0.02
    assert run["status"]["training"]["step"] == 7  # the trainer's fields stay: one field manager each
    assert read_status()["evaluation"]["milestones"][1]["averageDelta"] == 0.02  # what the report stage reads

    monkeypatch.setenv("KUBECPT_RUN", f"{namespace}/other")
    assert not push_status("kubecpt-train", {"training": {"step": 1}})  # another run: forbidden
    request = urllib.request.Request(
        f"{cluster.server}/apis/cpt.kubecpt.dev/v1alpha1/namespaces/{namespace}/continuedpretrains/pushed",
        data=b'{"spec": {"suspend": false}}',
        method="PATCH",
        headers={"Content-Type": "application/merge-patch+json", "Authorization": f"Bearer {token}"},
    )
    import ssl

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(cluster.pki.ca_cert)))
    assert refused.value.code == 403  # its spec: forbidden too
    assert get(cluster, namespace, "cpt", "pushed")["status"]["training"]["step"] == 7


def test_children_are_deleted_after_the_ttl_and_never_rerun(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    doc = run_doc("short-lived", runPolicy={"ttlSecondsAfterFinished": 0})
    cluster.apply({**doc, "metadata": {"name": "short-lived", "namespace": namespace}})
    run = eventually(lambda: phase_is(cluster, namespace, "short-lived", "Succeeded"), timeout=180, what="Succeeded")
    assert condition(run, "Preprocessed") == "True" and condition(run, "Complete") == "True"
    remaining = ["short-lived-spec"]  # every Job and the JobSet went, ttlSecondsAfterFinished after the run
    eventually(lambda: names(cluster, namespace, "short-lived") == remaining, timeout=60, what="TTL deletions")
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=short-lived")["items"]
    created = [e["message"] for e in events if e["reason"] == "Created"]
    assert len(created) == len(set(created)), created  # each child created once: none re-run after its TTL


def test_a_missing_secret_stalls_the_run_with_the_cause(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    doc = run_doc(
        "no-secret", storage={"uri": "s3://runs/no-secret", "credentialsSecret": {"name": "missing-credentials"}}
    )
    cluster.apply({**doc, "metadata": {"name": "no-secret", "namespace": namespace}})

    def stalled() -> dict[str, Any] | None:
        run = get(cluster, namespace, "cpt", "no-secret")
        return run if condition(run, "Stalled") == "True" else None

    run = eventually(stalled, timeout=120, what="Stalled")
    message = next(c for c in run["status"]["conditions"] if c["type"] == "Stalled")["message"]
    assert 'CreateContainerConfigError: secret "missing-credentials" not found' in message
    assert run["status"]["phase"] == "Preprocessing" and condition(run, "Failed") is None
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=no-secret")["items"]
    assert any(e["reason"] == "PodCannotStart" and e["type"] == "Warning" for e in events)


CHILD_KINDS = (
    "jobs,jobsets,configmaps,serviceaccounts,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io"
)


def children_by_uid(cluster: Cluster, namespace: str, run: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every child of the run now, by (kind, name): one LIST of every kind the operator creates."""
    found = get(cluster, namespace, CHILD_KINDS, "-l", f"cpt.kubecpt.dev/run={run}")
    return {(o["kind"], o["metadata"]["name"]): o for o in (found or {"items": []})["items"]}


def test_an_operator_killed_again_and_again_creates_each_child_once(operator: Operator, namespace: str) -> None:
    """The operator is killed (SIGKILL) and restarted every second while a run goes through its phases. What
    matters is what exists: each child once, owned by the run, never deleted and re-created (one uid per name,
    recorded at every poll). Events are best-effort: one killed between a create and its Event is never posted."""
    cluster = operator.cluster
    cluster.apply({**run_doc("crashy"), "metadata": {"name": "crashy", "namespace": namespace}})
    phases: set[str | None] = set()
    uids: defaultdict[tuple[str, str], set[str]] = defaultdict(set)  # (kind, name) -> every uid seen
    deadline = time.monotonic() + 180
    while not phase_is(cluster, namespace, "crashy", "Succeeded"):
        assert time.monotonic() < deadline, "the run did not complete"
        time.sleep(1.0)
        run = get(cluster, namespace, "cpt", "crashy")
        phases.add((run or {}).get("status", {}).get("phase"))
        for key, child in children_by_uid(cluster, namespace, "crashy").items():
            uids[key].add(child["metadata"]["uid"])
        assert operator.process is not None
        operator.process.kill()
        operator.process.wait()
        operator.start()
    run_uid = get(cluster, namespace, "cpt", "crashy")["metadata"]["uid"]
    final = children_by_uid(cluster, namespace, "crashy")
    for key, child in final.items():
        uids[key].add(child["metadata"]["uid"])
    assert {key: len(seen) for key, seen in uids.items() if len(seen) > 1} == {}  # never re-created
    assert set(uids) == set(final)  # nothing seen during the run went away
    kinds = sorted(kind for kind, _ in final)
    assert kinds == sorted(["ConfigMap", "Role", "RoleBinding", "ServiceAccount", *["Job"] * 6, "JobSet"]), kinds
    owners = {
        key: [(o["uid"], o.get("controller")) for o in c["metadata"]["ownerReferences"]] for key, c in final.items()
    }
    assert all(refs == [(run_uid, True)] for refs in owners.values()), owners  # one owner each: this run
    assert len(phases - {None}) >= 2, phases  # it was killed in more than one phase


def evaluated(storage: Storage, tokens: int, score: float) -> dict[str, Any]:
    """What an evaluation Job leaves in storage for one model: its export (not for the base model) and summary."""
    name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
    if tokens:
        storage.write_json({"tokens": tokens}, "exports", name, "export.json")
    task = {"task": "piqa", "metric": "acc_norm", "score": score, "stderr": 0.01}
    found = {"name": name, "tokens": tokens, "model": name, "scores": [task], "average": score, "perplexity": {}}
    storage.write_json(found, "eval", name, "summary.json")
    return found


def evaluation_milestones(cluster: Cluster, namespace: str, run: str) -> dict[int, dict[str, Any]]:
    status = get(cluster, namespace, "cpt", run)["status"]
    return {m["tokens"]: m for m in status.get("evaluation", {}).get("milestones", [])}


def test_a_late_push_of_an_older_evaluation_view_keeps_the_newer_entries(
    operator: Operator, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two evaluation Jobs in the bad order: the 400M Job lists storage before the baseline and the 1B export are
    written, the 1B Job lists after and pushes first; the 400M Job's push comes last."""
    from cpt_pipeline.evaluate.results import evaluate_run
    from cpt_pipeline.storage import Storage

    cluster = operator.cluster
    play_a_stage_pod(cluster, namespace, "scored", tmp_path, monkeypatch)
    spec = ContinuedPretrain.model_validate(run_doc("scored")).spec
    early, late = Storage.open_uri(str(tmp_path / "early")), Storage.open_uri(str(tmp_path / "late"))
    evaluated(early, 400_000_000, 0.62)
    for tokens, score in ((0, 0.6), (400_000_000, 0.62), (1_000_000_000, 0.65)):
        evaluated(late, tokens, score)
    evaluate_run(spec, late, target="tokens-0001000000000")
    evaluate_run(spec, early, target="tokens-0000400000000")

    scores = evaluation_milestones(cluster, namespace, "scored")
    assert sorted(scores) == [0, 400_000_000, 1_000_000_000]  # the 1B entry is still there
    assert scores[400_000_000]["averageDelta"] == pytest.approx(0.02)  # and the deltas the early view lacked
    assert scores[1_000_000_000]["scores"][0]["delta"] == pytest.approx(0.05)
    assert get(cluster, namespace, "cpt", "scored")["status"]["evaluation"]["latestAverage"] == 0.65
    shown = cluster.kubectl("get", "cpt", "scored", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    managers = {m["manager"] for m in json.loads(shown)["metadata"]["managedFields"]}
    assert {"kubecpt-evaluate-tokens-0000400000000", "kubecpt-evaluate-tokens-0001000000000"} <= managers


def test_evaluation_jobs_pushing_at_once_each_keep_their_entry(
    operator: Operator, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six evaluation Jobs, each with a view of its own model only, push at the same moment."""
    from cpt_pipeline.evaluate.results import evaluate_run
    from cpt_pipeline.storage import Storage

    cluster = operator.cluster
    play_a_stage_pod(cluster, namespace, "burst", tmp_path, monkeypatch)
    spec = ContinuedPretrain.model_validate(run_doc("burst")).spec
    milestones = range(1_000_000_000, 7_000_000_000, 1_000_000_000)
    views = {tokens: Storage.open_uri(str(tmp_path / str(tokens))) for tokens in milestones}
    for tokens, storage in views.items():
        evaluated(storage, tokens, tokens / 1e10)
    with ThreadPoolExecutor(len(views)) as pool:
        list(pool.map(lambda item: evaluate_run(spec, item[1], target=f"tokens-{item[0]:013d}"), views.items()))
    assert sorted(evaluation_milestones(cluster, namespace, "burst")) == list(milestones)


LONGEST = "a-run-name-of-sixty-three-characters-" + "x" * 26  # the longest a label value can be


def test_a_run_named_with_63_characters_goes_through_every_stage(operator: Operator, namespace: str) -> None:
    """The name is the run label's value on every child and pod, and (shortened) every child's name prefix: the
    JobSet's Service and its pods' host names included."""
    cluster = operator.cluster
    assert len(LONGEST) == 63
    cluster.apply({**run_doc(LONGEST), "metadata": {"name": LONGEST, "namespace": namespace}})
    eventually(lambda: phase_is(cluster, namespace, LONGEST, "Succeeded"), timeout=180, what="Succeeded")
    children = children_by_uid(cluster, namespace, LONGEST)
    assert len(children) == 11 and all(len(name) <= 52 for _, name in children), sorted(children)
    jobset = next(child for (kind, _), child in children.items() if kind == "JobSet")
    pods = get(cluster, namespace, "pods", "-l", f"cpt.kubecpt.dev/run={LONGEST}")["items"]
    training = [p for p in pods if p["metadata"]["labels"].get("cpt.kubecpt.dev/stage") == "train"]
    assert [p["spec"]["hostname"] for p in training] == [f"{jobset['metadata']['name']}-node-0-0"]
    env = {e["name"]: e.get("value") for p in pods for e in p["spec"]["containers"][0]["env"]}
    assert env["KUBECPT_RUN"] == f"{namespace}/{LONGEST}"
    uid = get(cluster, namespace, "continuedpretrain", LONGEST)["metadata"]["uid"]
    assert env["KUBECPT_RUN_UID"] == uid  # the run's incarnation (pipeline/preprocess/started.py)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("r" * 200, "metadata.name must be at most 63 characters"),
        ("r" * 64, "metadata.name must be at most 63 characters"),
        ("paper.v2", "an RFC 1035 label, no dots"),
        ("9lives", "metadata.name must start with a lowercase letter"),
    ],
)
def test_a_name_no_child_could_carry_is_refused_by_the_api_server(
    crds: Cluster, namespace: str, name: str, words: str
) -> None:
    doc = {**run_doc(name), "metadata": {"name": name, "namespace": namespace}}
    result = crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0 and words in result.stderr, result.stderr
    assert get(crds, namespace, "cpt", name) is None
