"""The whole product once, the way a user meets it: `kubectl apply` two ContinuedPretrains, real containers run
every stage on the real node, and the scores land in the resources' status.

The namespace enforces Pod Security `restricted` (real API server admission): every stage pod runs as a
non-root user with the host's Python environment mounted through claims, never hostPath. The runs read S3
credentials, a hub token and a tracker key from Secrets; afterwards no output holds any of them.

Both runs train the shared stories model with world size 2 on the same data: `gang` as 2 pods x 1 process,
`single` as 1 pod x 2 processes. `gang` is the chaos run: a seeded schedule of faults (tests/e2e/chaos.py)
kills its stage and training pods, stalls and resets its S3 connections, and SIGKILLs the operator and restarts
the kubelet (those two hit `single` too); it completes, and every step's sample ids and loss equal the
fault-free `single` run's. See docs/test-cluster.md, The chaos run.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import s3fs

from cpt.api import ContinuedPretrain
from cpt.kube_yaml import dump
from cpt_pipeline.train.schedule import lr_multiplier
from tests.cluster.cluster import Cluster
from tests.cluster.helpers import eventually
from tests.conftest import REPO, shared_data_dir
from tests.e2e.chaos import SEED_ENV, ChaosDriver, chaos_seed, schedule
from tests.e2e.conftest import WORKER_IMAGE, WORKER_USER, HostVolume
from tests.e2e.leaks import leaks
from tests.e2e.node import NODE_ADDRESS
from tests.e2e.slow_s3 import SlowCheckpoints
from tests.operator.process import Operator
from tests.s3proxy import S3FaultProxy

NAMESPACE = "e2e"
BUCKET = "kubecpt-e2e"
STEP_TOKENS = 2 * 16 * 256  # world size x microBatchSize x sequenceLength
STEPS = 24
CHECKPOINT_STEPS = 4
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
# Secret name -> its keys and values. Fresh values per session, so a leak cannot hide behind a common word.
SECRETS = {
    "s3-credentials": {
        "AWS_ACCESS_KEY_ID": f"AKIAE2E{secrets.token_hex(8).upper()}",
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_DEFAULT_REGION": "us-east-1",  # not a secret: never scanned for
    },
    "hub-token": {"token": f"hf_{secrets.token_hex(16)}"},
    "tracker": {"api-key": f"trk{secrets.token_hex(20)}"},
}
# What the leak scan looks for: "secret/key" -> value.
SECRET_VALUES = {
    f"{name}/{k}": v for name, data in SECRETS.items() for k, v in data.items() if k != "AWS_DEFAULT_REGION"
}


def resource(name: str, endpoint: str, nodes: int, procs: int, namespace: str = NAMESPACE) -> dict[str, Any]:
    data = f"s3://{BUCKET}/inputs"
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": f"{data}/models/stories260K", "secretRef": {"name": "hub-token", "key": "token"}},
            "data": {
                "sources": [{"name": "stem", "uri": f"{data}/corpora/openstax_stem.jsonl"}],
                "replay": {
                    "source": {"name": "stories", "uri": f"{data}/corpora/stories260k_samples.jsonl"},
                    "fraction": "0.25",
                },
                "sequenceLength": 256,
                "tokenBudget": STEP_TOKENS * STEPS,
                "milestones": [STEP_TOKENS * STEPS // 2],
                "preprocessing": {"workers": 2},
            },
            "training": {
                "nodes": nodes,
                "procsPerNode": procs,
                "microBatchSize": 16,
                "gradAccumulation": 1,
                "deepspeed": {"zeroStage": 3, "precision": "fp32", "gradientCheckpointing": False},
                "optimizer": {"lr": "1e-3"},
                "checkpoint": {"intervalSteps": CHECKPOINT_STEPS, "keepLast": 2},
                "logIntervalSteps": 1,
                "extraEnv": {"CPT_LOG_SAMPLE_IDS": "1"},  # every step's sample ids, to compare data order
                "secretEnv": {"WANDB_API_KEY": {"name": "tracker", "key": "api-key"}},
            },
            "evaluation": {
                "localTaskDir": f"{data}/benchmarks",
                "tasks": [
                    {"name": "arc_easy", "metric": "acc_norm", "limit": 20},
                    {"name": "piqa", "metric": "acc_norm", "limit": 20},
                ],
                "perplexity": {
                    "domain": {"uri": f"{data}/corpora/openstax_heldout.jsonl", "maxDocuments": 10},
                    "general": {"uri": f"{data}/corpora/stories_heldout.jsonl", "maxDocuments": 20},
                },
            },
            "storage": {
                "uri": f"s3://{BUCKET}/runs/{name}",
                "endpoint": endpoint,
                "credentialsSecret": {"name": "s3-credentials"},
            },
            "runPolicy": {"maxRestarts": 2},
        },
    }


def upload_inputs(fs: s3fs.S3FileSystem) -> None:
    """The model, a slice of the corpora (held-out documents kept apart) and two benchmarks, into the bucket
    (once a session: another module may have put them there)."""
    if fs.exists(f"{BUCKET}/inputs/corpora/stories_heldout.jsonl"):
        return
    shared = shared_data_dir()
    fs.mkdir(BUCKET)
    fs.put(str(shared / "models" / "stories260K") + "/", f"{BUCKET}/inputs/models/stories260K/", recursive=True)
    for task in ("arc_easy", "piqa"):
        fs.put(str(shared / "benchmarks" / task) + "/", f"{BUCKET}/inputs/benchmarks/{task}/", recursive=True)
    stem = (shared / "corpora" / "openstax_stem.jsonl").read_text().splitlines()
    stories = (shared / "corpora" / "stories260k_samples.jsonl").read_text().splitlines()
    for name, lines in (
        ("openstax_stem.jsonl", stem[:150]),
        ("openstax_heldout.jsonl", stem[-10:]),
        ("stories260k_samples.jsonl", stories[:1900]),
        ("stories_heldout.jsonl", stories[-20:]),
    ):
        fs.pipe_file(f"{BUCKET}/inputs/corpora/{name}", ("\n".join(lines) + "\n").encode())


def restricted_namespace(cluster: Cluster, volumes: list[HostVolume], namespace: str = NAMESPACE) -> None:
    """A namespace enforcing Pod Security `restricted`, with the Secrets and the claims of the host folders the
    stage pods mount; refuses a pod that would break the profile, so admission is known to be on."""
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
    for name, data in SECRETS.items():
        cluster.kubectl(
            "create", "secret", "generic", name, "-n", namespace, *(f"--from-literal={k}={v}" for k, v in data.items())
        )
    for volume in volumes:
        for obj in volume.objects(namespace):
            cluster.apply(obj)
    claims = [f"pvc/{v.name}" for v in volumes]
    cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Bound", *claims, "-n", namespace, "--timeout=60s")
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": WORKER_IMAGE, "securityContext": {"runAsUser": 0}}]},
    }
    refused = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(root_pod), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused


@pytest.fixture(scope="module")
def setup(
    node, pod_s3: str, template_file: Path, worker_volumes: list[HostVolume], tmp_path_factory: pytest.TempPathFactory
):
    cluster: Cluster = node.cluster
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("apply", "--server-side", "-f", str(cluster.bin_dir / "crds" / "jobset.x-k8s.io_jobsets.yaml"))
    for crd in ("continuedpretrains.cpt.kubecpt.dev", "jobsets.jobset.x-k8s.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    restricted_namespace(cluster, worker_volumes)
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": pod_s3})
    upload_inputs(fs)
    logs = tmp_path_factory.mktemp("operator")
    env = {
        "KUBECPT_WORKER_IMAGE": WORKER_IMAGE,
        "KUBECPT_PULL_POLICY": "Never",
        "KUBECPT_WORKER_POD_TEMPLATE": str(template_file),
    }
    operator = Operator(cluster, NAMESPACE, logs / "operator.log", env=env)
    operator.start()
    follower = LogFollower(cluster, logs / "pods")
    follower.start()
    yield cluster, fs, pod_s3, operator, logs
    follower.stop()
    keep_pod_logs(cluster, logs / "pods")
    operator.stop()
    print(operator.log.read_text()[-3000:])


class LogFollower(threading.Thread):
    """`kubectl logs -f` of every training pod into `out`, so a pod the JobSet deletes on restart keeps its
    last words for the post-mortem."""

    def __init__(self, cluster: Cluster, out: Path) -> None:
        super().__init__(daemon=True)
        self.cluster, self.out, self.done = cluster, out, threading.Event()
        self.followed: dict[str, subprocess.Popen[bytes]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        while not self.done.wait(1):
            pods = get(self.cluster, "pods", "-l", "cpt.kubecpt.dev/stage=train") or {"items": []}
            for pod in pods["items"]:
                name = pod["metadata"]["name"]
                if name in self.followed or pod.get("status", {}).get("phase") != "Running":
                    continue
                with (self.out / f"{name}.follow.log").open("wb") as handle:
                    argv = [self.cluster.binary("kubectl"), "logs", "-f", "--timestamps", name, "-n", NAMESPACE]
                    self.followed[name] = subprocess.Popen(
                        argv, stdout=handle, stderr=subprocess.STDOUT, env=self.cluster.env()
                    )

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        for process in self.followed.values():
            process.terminate()


def keep_pod_logs(cluster: Cluster, out: Path) -> None:
    """Every pod's description and logs (also of the previous container), kept for a failure's post-mortem."""
    out.mkdir(exist_ok=True)
    (out / "pods.txt").write_text(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
    for pod in (get(cluster, "pods") or {}).get("items", []):
        name = pod["metadata"]["name"]
        parts = [cluster.kubectl("describe", "pod", name, "-n", NAMESPACE, check=False).stdout]
        for flag in ("--previous", "--timestamps"):
            parts.append(cluster.kubectl("logs", name, "-n", NAMESPACE, flag, check=False).stdout)
        (out / f"{name}.log").write_text("\n".join(parts))
    print(f"\npod logs kept in {out}")


def get(cluster: Cluster, *what: str) -> Any:
    result = cluster.kubectl("get", *what, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def training_pods(cluster: Cluster, run: str) -> list[dict[str, Any]]:
    pods = get(cluster, "pods", "-l", f"jobset.sigs.k8s.io/jobset-name={run}-train")
    return [p for p in (pods or {}).get("items", []) if "deletionTimestamp" not in p["metadata"]]


def stage_seconds(cluster: Cluster, run: str) -> dict[str, float]:
    """Wall time of each stage Job of a run (first pod start to completion), from the Jobs' status."""
    jobs = get(cluster, "jobs", "-l", f"cpt.kubecpt.dev/run={run}") or {"items": []}
    seconds: dict[str, float] = {}
    for job in jobs["items"]:
        status = job.get("status", {})
        if "startTime" in status and "completionTime" in status:
            start, end = (_time(status[k]) for k in ("startTime", "completionTime"))
            name = job["metadata"]["name"].removeprefix(f"{run}-")
            seconds[name] = seconds.get(name, 0.0) + (end - start).total_seconds()
    jobset = get(cluster, "jobset", f"{run}-train")
    done = [c for c in jobset["status"]["conditions"] if c["type"] == "Completed" and c["status"] == "True"]
    seconds["train (JobSet, restarts included)"] = (
        _time(done[0]["lastTransitionTime"]) - _time(jobset["metadata"]["creationTimestamp"])
    ).total_seconds()
    return seconds


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class ChildWatch:
    """`kubectl get -w` of the operator's children (its stage Jobs and the JobSet, not the JobSet's own Jobs):
    every (name, uid) the API server ever showed, so a child created twice is seen even if it was short-lived."""

    KINDS = {
        "jobs": "cpt.kubecpt.dev/run,!jobset.sigs.k8s.io/jobset-name",
        "jobsets.jobset.x-k8s.io": "cpt.kubecpt.dev/run",
    }

    def __init__(self, cluster: Cluster, out: Path) -> None:
        self.cluster, self.files = cluster, [out / f"watch-{kind.split('.')[0]}.txt" for kind in self.KINDS]
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> ChildWatch:
        columns = "custom-columns=NAME:.metadata.name,UID:.metadata.uid"
        for (kind, selector), path in zip(self.KINDS.items(), self.files, strict=True):
            argv = [self.cluster.binary("kubectl"), "get", kind, "-n", NAMESPACE, "-l", selector, "-w"]
            with path.open("wb") as handle:
                argv += ["--no-headers", "-o", columns]
                self.processes.append(subprocess.Popen(argv, stdout=handle, env=self.cluster.env()))
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)

    def uids(self) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for path in self.files:
            for line in path.read_text().splitlines():
                name, uid = line.split()
                seen.setdefault(name, set()).add(uid)
        return seen


def failed_pods(cluster: Cluster, run: str, prefix: str) -> int:
    """The failed pods of a run's stage Jobs whose names start with `prefix` (the Jobs' status.failed)."""
    jobs = get(cluster, "jobs", "-l", f"cpt.kubecpt.dev/run={run}") or {"items": []}
    return sum(j.get("status", {}).get("failed", 0) for j in jobs["items"] if j["metadata"]["name"].startswith(prefix))


def test_a_gang_under_seeded_chaos_completes_exactly_like_the_fault_free_run(setup, node) -> None:
    """`gang` (2 pods x 1 process) runs under a seeded schedule of faults (tests/e2e/chaos.py) triggered by its
    progress; `single` (1 pod x 2 processes, S3 direct) is the fault-free reference, hit only by the cluster-wide
    faults (operator SIGKILL, kubelet restart). Replay a failing run with KUBECPT_CHAOS_SEED=<printed seed>."""
    cluster, fs, endpoint, operator, logs = setup
    seed = chaos_seed()
    faults = schedule(seed, CHECKPOINT_STEPS + 1, STEPS - 6)  # steps left to observe the last
    plan = "\n  ".join(f.describe() for f in faults)
    print(f"\nchaos seed {seed} (replay: {SEED_ENV}={seed}), {len(faults)} faults:\n  {plan}", flush=True)
    (logs / "chaos-schedule.txt").write_text(f"seed {seed}\n  {plan}\n")
    with S3FaultProxy(endpoint, host=NODE_ADDRESS) as proxy, ChildWatch(cluster, logs) as children:
        docs = [resource("gang", proxy.endpoint, nodes=2, procs=1), resource("single", endpoint, nodes=1, procs=2)]
        manifest = logs / "runs.yaml"
        manifest.write_text("---\n".join(dump(doc) for doc in docs))
        applied = time.monotonic()
        cluster.kubectl("apply", "-f", str(manifest))
        driver = ChaosDriver(cluster, node, operator, proxy, "gang", NAMESPACE, faults, training_pods=2)

        def finished() -> dict[str, dict[str, Any]] | None:
            driver.poll()
            operator.alive()
            objs = {run: get(cluster, "cpt", run) or {} for run in ("gang", "single")}
            for obj in objs.values():
                phase = obj.get("status", {}).get("phase")
                assert phase != "Failed", json.dumps(obj["status"], indent=1) + "\n" + "\n".join(driver.log)
            done = all(o.get("status", {}).get("phase") == "Succeeded" for o in objs.values())
            return objs if done and driver.done() else None

        runs = eventually(finished, timeout=2400, interval=0.5, what="both runs Succeeded, every fault fired")
        wall = time.monotonic() - applied
        s3_fired = [f"{f.kind} {f.method} {f.path}" for f in proxy.fired()]
        assert proxy.pending() == 0, (proxy.pending(), s3_fired)
    fault_log = driver.log + [f"  s3 fired: {line}" for line in s3_fired]
    print(f"\nchaos seed {seed}, fault log:\n" + "\n".join(fault_log), flush=True)
    assert len(driver.log) >= 10, driver.log

    # No child of the operator was ever created twice (operator restarts included).
    twice = {name: uids for name, uids in children.uids().items() if len(uids) > 1}
    assert not twice and children.uids(), (twice, children.uids())

    # Restarts as documented (docs/operator.md, The training gang): every gang restart is in
    # status.training.restarts; only the SIGKILL counts towards maxRestarts, the SIGTERM is a preemption.
    kinds = [f.kind for f in faults]
    gang_restarts = kinds.count("train-sigkill") + kinds.count("train-sigterm")
    jobset = get(cluster, "jobset", "gang-train")["status"]
    assert jobset["restarts"] == gang_restarts, jobset
    assert jobset.get("restartsCountTowardsMax", 0) == kinds.count("train-sigkill"), jobset
    # a SIGKILLed stage pod is retried by its Job (runPolicy.backoffLimit), nothing else failed
    assert failed_pods(cluster, "gang", "gang-preprocess") == kinds.count("preprocess-kill")
    assert failed_pods(cluster, "gang", "gang-eval-tokens") == kinds.count("eval-kill")
    assert failed_pods(cluster, "single", "single-") == 0

    # What a user sees: kubectl get shows tokens, step and the average score.
    # (The Expected column, 150a960, is blank for a CPU run: the score is read at its column's offset.)
    table = cluster.kubectl("get", "cpt", "-n", NAMESPACE).stdout
    line = next(line for line in table.splitlines() if line.startswith("gang "))
    header = table.splitlines()[0]
    assert header.split()[:6] == ["NAME", "PHASE", "COMPLETE", "TOKENS", "STEP", "EXPECTED"], header
    assert line.split()[1:5] == ["Succeeded", "True", str(STEP_TOKENS * STEPS), str(STEPS)], line
    assert 0.0 <= float(line[header.index("AVG SCORE") :].split()[0]) <= 1.0, line

    for run, obj in runs.items():
        status = obj["status"]
        milestones = status["evaluation"]["milestones"]
        assert [m["tokens"] for m in milestones] == [0, STEP_TOKENS * STEPS // 2, STEP_TOKENS * STEPS], milestones
        for milestone in milestones:
            assert {s["task"] for s in milestone["scores"]} == {"arc_easy", "piqa"}
            assert milestone["domainPerplexity"] > 1 and milestone["generalPerplexity"] > 1
        for milestone in milestones[1:]:
            assert all(s["delta"] is not None for s in milestone["scores"]) and milestone["averageDelta"] is not None
        # continued pre-training on the domain lowers the domain perplexity
        assert milestones[-1]["domainPerplexity"] < milestones[0]["domainPerplexity"]
        assert status["training"]["restarts"] == (gang_restarts if run == "gang" else 0)
        assert status["preprocess"]["shards"] >= 2 and status["reportUri"].endswith("index.html")
        root = f"{BUCKET}/runs/{run}"
        assert fs.find(f"{root}/data"), "no shards in the bucket"
        assert fs.cat_file(f"{root}/checkpoints/latest").decode().strip()
        for export in status["training"]["exports"]:
            assert fs.exists(f"{root}/exports/{export}/config.json")
            assert fs.exists(f"{root}/exports/{export}/model.safetensors")
        assert fs.exists(f"{root}/report/index.html")

    # Pod Security `restricted` admitted every stage pod: the image's non-root user, no hostPath volume
    for pod in get(cluster, "pods")["items"]:
        assert pod["spec"]["securityContext"]["runAsUser"] == WORKER_USER, pod["metadata"]["name"]
        assert not any("hostPath" in v for v in pod["spec"]["volumes"]), pod["metadata"]["name"]

    # kubectl logs of a training pod shows the progress lines
    pod = training_pods(cluster, "single")[0]["metadata"]["name"]
    log = cluster.kubectl("logs", pod, "-n", NAMESPACE).stdout
    events = [json.loads(line) for line in log.splitlines() if line.startswith('{"event": "train_step"')]
    assert [e["step"] for e in events][-1] == STEPS and all("loss" in e for e in events), log[-2000:]

    # The gang, killed and stopped and its storage faulted, resumed from its checkpoints in S3 with the
    # fault-free run's data order and losses at every step.
    gang, single = curve(fs, "gang"), curve(fs, "single")
    assert [r["step"] for r in gang] == list(range(1, STEPS + 1))
    for want, have in zip(single, gang, strict=True):
        assert have["sampleIds"] == want["sampleIds"], have["step"]
        assert abs(have["loss"] - want["loss"]) <= 1e-5, (have["step"], have["loss"], want["loss"])

    timings = {run: stage_seconds(cluster, run) for run in runs}
    report = {
        "apply_to_both_complete_s": round(wall, 1),
        "chaos_seed": seed,
        "faults": fault_log,
        "stage_seconds": timings,
    }
    (logs / "timings.json").write_text(json.dumps(report, indent=1))
    print("\nend-to-end timings:", json.dumps(report, indent=1))


def curve(fs: s3fs.S3FileSystem, run: str) -> list[dict[str, Any]]:
    """The run's metrics.jsonl: one record per optimizer step."""
    text = fs.cat_file(f"{BUCKET}/runs/{run}/train/metrics.jsonl").decode()
    return [json.loads(line) for line in text.split("\n") if line.strip()]


GROWN_STEPS = STEPS + 6  # the grown budget: a second segment of 6 steps
NEW_MILESTONE = STEP_TOKENS * (STEPS + 3)


def test_a_succeeded_runs_grown_budget_continues_it_on_the_node(setup) -> None:
    """The study's 400M -> 1B as one patch: `single`, Succeeded by the chaos test above (run the module), gets its
    budget grown and a milestone appended. The operator trains segment 1 on the node from the checkpoint in S3:
    no step repeated, the steps taken keep their samples, the new ones read new documents, every step's rate
    follows cosine's rule (re-warm and re-decay over the new segment), the new milestones are evaluated."""
    cluster, fs, endpoint, operator, _ = setup
    run = get(cluster, "cpt", "single")
    assert run and run["status"]["phase"] == "Succeeded", "needs the `single` run of the chaos test (run the module)"
    first = curve(fs, "single")
    spec = resource("single", endpoint, nodes=1, procs=2)["spec"]
    grow = {"tokenBudget": STEP_TOKENS * GROWN_STEPS, "milestones": [*spec["data"]["milestones"], NEW_MILESTONE]}
    patch = json.dumps({"spec": {"data": grow}})
    cluster.kubectl("patch", "cpt", "single", "-n", NAMESPACE, "--type=merge", "-p", patch)

    def continued() -> dict[str, Any] | None:
        operator.alive()
        status = (get(cluster, "cpt", "single") or {}).get("status", {})
        assert status.get("phase") != "Failed", json.dumps(status, indent=1)
        done = status.get("phase") == "Succeeded" and len(status.get("segments", [])) == 2
        return status if done and status["evaluation"]["milestones"][-1]["tokens"] == grow["tokenBudget"] else None

    status = eventually(continued, timeout=900, interval=1, what="single Succeeded again with two segments")
    assert [(s["startStep"], s["endStep"]) for s in status["segments"]] == [(0, STEPS), (STEPS, GROWN_STEPS)]
    tokens = [m["tokens"] for m in status["evaluation"]["milestones"]]
    assert tokens == [0, STEP_TOKENS * STEPS // 2, STEP_TOKENS * STEPS, NEW_MILESTONE, STEP_TOKENS * GROWN_STEPS]
    assert all(m["domainPerplexity"] > 1 for m in status["evaluation"]["milestones"])
    assert get(cluster, "jobset", "single-train-segment-01")["metadata"]["uid"]

    grown = curve(fs, "single")
    assert [r["step"] for r in grown] == list(range(1, GROWN_STEPS + 1))  # no step repeated
    assert [(r["sampleIds"], r["loss"]) for r in grown[:STEPS]] == [(r["sampleIds"], r["loss"]) for r in first]
    new_ids = [i for r in grown[STEPS:] for i in r["sampleIds"]]
    assert new_ids and all(i.startswith(("domain-segment-01/", "replay-segment-01/")) for i in new_ids), new_ids[:4]
    schedule = ContinuedPretrain.model_validate(resource("single", endpoint, 1, 2)).spec.training.schedule
    multiplier = lr_multiplier(schedule, [STEPS, GROWN_STEPS])
    assert [r["lr"] for r in grown] == pytest.approx([1e-3 * multiplier(s) for s in range(GROWN_STEPS)])
    for export in status["training"]["exports"][-2:]:
        assert fs.exists(f"{BUCKET}/runs/single/exports/{export}/model.safetensors"), export


PREEMPT_STEPS = 200  # far more than the test waits for: the run is deleted once the gang resumed
HOLD_SECONDS = 20  # each checkpoint write after the delete: one node's upload alone outlasts a 30 s grace period


def preempt_resource(endpoint: str) -> dict[str, Any]:
    """A 2-pod gang with no checkpoint before the SIGTERM (intervalSteps past the budget), no baseline, and
    `maxRestarts: 0`, so a restart that counted would fail the run."""
    doc = resource("preempt", endpoint, nodes=2, procs=1)
    spec = doc["spec"]
    spec["data"]["tokenBudget"] = STEP_TOKENS * PREEMPT_STEPS
    del spec["data"]["milestones"]
    spec["training"]["checkpoint"] = {"intervalSteps": 10**6, "keepLast": 1}
    spec["evaluation"]["baseline"] = False  # the run is deleted before its one export would be evaluated
    spec["runPolicy"] = {"maxRestarts": 0}
    return doc


def first_step_after_restart(cluster: Cluster) -> int | None:
    """The first step the restarted gang's node 0 trained (its log's first progress line)."""
    selector = "jobset.sigs.k8s.io/jobset-name=preempt-train,jobset.sigs.k8s.io/restart-attempt=1"
    pods = get(cluster, "pods", "-l", f"{selector},batch.kubernetes.io/job-completion-index=0") or {"items": []}
    for pod in pods["items"]:
        log = cluster.kubectl("logs", pod["metadata"]["name"], "-n", NAMESPACE, check=False).stdout
        steps = [json.loads(line)["step"] for line in log.splitlines() if line.startswith('{"event": "train_step"')]
        if steps:
            return steps[0]
    return None


def test_a_gracefully_deleted_gang_pod_resumes_from_the_step_sigterm_arrived(setup) -> None:
    """`kubectl delete pod` (graceful) of one gang pod mid-run while every checkpoint write takes 20 s: the
    worker finishes its step, saves and uploads within the pod's grace period (runPolicy default 300 s, the
    launcher's kill timer inside it), exits 75, and the gang restarts without counting (maxRestarts 0) and
    resumes at the step after the SIGTERM, not from the start. Before, the 30 s default grace (and torchrun's own
    30 s) killed the upload: no checkpoint, a counted restart."""
    cluster, fs, endpoint, operator, logs = setup
    with SlowCheckpoints(NODE_ADDRESS, endpoint, HOLD_SECONDS) as proxy:
        manifest = logs / "preempt.yaml"
        manifest.write_text(dump(preempt_resource(proxy.endpoint)))
        cluster.kubectl("apply", "-f", str(manifest))

        def training() -> dict[str, Any]:
            operator.alive()
            obj = get(cluster, "cpt", "preempt") or {}
            assert obj.get("status", {}).get("phase") != "Failed", json.dumps(obj["status"], indent=1)
            return obj.get("status", {}).get("training") or {}

        def stepped() -> int | None:
            step = training().get("step", 0)
            return step if step >= 3 else None

        def restarted() -> int | None:
            training()  # fails fast if the run failed (a counted restart)
            return first_step_after_restart(cluster)

        seen = eventually(stepped, timeout=900, interval=0.5, what="the gang's step 3")
        proxy.armed.set()
        victim = next(p for p in training_pods(cluster, "preempt") if "-node-0-1-" in p["metadata"]["name"])
        cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", NAMESPACE, "--wait=false")
        resumed = eventually(restarted, timeout=900, interval=2, what="the restarted gang's first step")
        proxy.armed.clear()

        latest = f"{BUCKET}/runs/preempt/checkpoints/latest"
        fs.invalidate_cache()
        assert fs.exists(latest), f"no checkpoint saved on SIGTERM: the gang restarted at step {resumed}"
        tag = fs.cat_file(latest).decode().strip()
        saved = int(tag.removeprefix("step-"))
        assert seen <= saved < PREEMPT_STEPS and resumed == saved + 1, (seen, tag, resumed)
        assert any(f"/checkpoints/{tag}/" in path for path in proxy.held), proxy.held  # the upload was slow
        jobset = get(cluster, "jobset", "preempt-train")["status"]
        assert jobset["restarts"] == 1 and jobset.get("restartsCountTowardsMax", 0) == 0, jobset
        assert training()["restarts"] == 1

        cluster.kubectl("delete", "cpt", "preempt", "-n", NAMESPACE, "--wait=false")
        pods = ["pods", "-l", "cpt.kubecpt.dev/run=preempt"]
        eventually(lambda: not (get(cluster, *pods) or {}).get("items", [1]), timeout=600, what="pods gone")


def cluster_outputs(cluster: Cluster, logs: Path) -> list[tuple[str, bytes]]:
    """Every output of the runs in the cluster: the resources (spec and status), Events, ConfigMaps, the
    children and their pods (specs and statuses), the logs of every pod (also the previous container's and
    those followed before a pod was deleted) and the operator's log."""
    kinds = "cpt,events,configmaps,pods,jobs,jobsets.jobset.x-k8s.io,services,serviceaccounts,roles,rolebindings"
    found = [(kind, json.dumps(obj).encode()) for kind, obj in [("objects", get(cluster, kinds))]]
    pods = (get(cluster, "pods") or {}).get("items", [])
    for pod in pods:
        name = pod["metadata"]["name"]
        for flag in ("--all-containers", "--previous"):
            found.append(
                (
                    f"logs {name} {flag}",
                    cluster.kubectl("logs", name, "-n", NAMESPACE, flag, check=False).stdout.encode(),
                )
            )
    found += [(f"log {path.name}", path.read_bytes()) for path in (logs / "pods").glob("*.follow.log")]
    found.append(("operator log", (logs / "operator.log").read_bytes()))
    return found


def storage_outputs(fs: s3fs.S3FileSystem) -> list[tuple[str, bytes]]:
    """Every object the runs wrote: shards, checkpoints, logs, metrics, reports, exports and their configs."""
    fs.invalidate_cache()
    return [(path, fs.cat_file(path)) for path in fs.find(f"{BUCKET}/runs")]


def test_no_secret_value_reaches_any_output(setup) -> None:
    """After the runs above (S3 credentials, a hub token and a tracker key from Secrets), no output holds any
    secret value, plain or base64-encoded. The scan is shown to work on the Secrets themselves."""
    cluster, fs, _, _, logs = setup
    values = SECRET_VALUES
    run = get(cluster, "cpt", "gang")
    assert run and run["status"]["phase"] == "Succeeded", "the leak scan needs the finished runs of this module"
    pod = next(p for p in training_pods(cluster, "gang"))
    container = pod["spec"]["containers"][0]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["HF_TOKEN"]["name"] == "hub-token" and refs["WANDB_API_KEY"]["name"] == "tracker", refs
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]

    stored = get(cluster, "secrets")
    assert sorted(leaks([("secrets", json.dumps(stored).encode())], values)) == sorted(f"secrets: {v}" for v in values)
    outputs = cluster_outputs(cluster, logs) + storage_outputs(fs)
    assert len(outputs) > 50 and any("/checkpoints/" in where for where, _ in outputs), [w for w, _ in outputs]
    assert leaks(outputs, values) == []
    print(f"\nleak scan: {len(outputs)} outputs, {sum(len(d) for _, d in outputs)} bytes, no secret found")
