"""The chaos run's seeded fault schedule and the driver that fires it on the real node.

`schedule(seed)` is a pure function: the same seed gives the same list of faults, each with the progress that
triggers it (a stage pod of the run running, a training step reached, training done), never a wall-clock time.
`ChaosDriver` watches the cluster and fires the next fault once its trigger is observed, logging each one.

Pod-level faults (a container SIGKILLed through containerd, a graceful pod deletion = SIGTERM) and the object
store's faults (armed on the run's own S3 proxy) hit only the chaos run; the operator's SIGKILL and the kubelet's
restart are cluster-wide and hit every run on the node.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from tests.s3proxy import Fault as ProxyFault
from tests.s3proxy import S3FaultProxy

SEED_ENV = "KUBECPT_CHAOS_SEED"
PREPROCESS, TRAINING, EVALUATION = "preprocess", "training", "evaluation"
# Kinds that hit only the chaos run, and those that hit the whole node.
POD_KINDS = ("preprocess-kill", "train-sigkill", "train-sigterm", "eval-kill")
CLUSTER_KINDS = ("operator-kill", "kubelet-restart")
S3_KINDS = ("s3-reset", "s3-stall", "s3-slowdown")
# Every schedule holds each of these once (the pod kinds in their own phase), then EXTRA more drawn.
REQUIRED = (*POD_KINDS, *CLUSTER_KINDS, "s3-reset", "s3-stall")
EXTRA_KINDS = ("operator-kill", *S3_KINDS)
EXTRA = 3


@dataclass(frozen=True)
class Fault:
    """One fault: `kind`, fired in `phase` once the trigger holds (in training: `step` reached)."""

    kind: str
    phase: str
    step: int = 0
    count: int = 1  # S3 faults: how many requests it hits
    seconds: float = 0.0  # s3-stall: how long each request is held

    def describe(self) -> str:
        where = f"step>={self.step}" if self.phase == TRAINING else self.phase
        extra = f" x{self.count}" if self.kind in S3_KINDS else ""
        extra += f" {self.seconds:.0f}s" if self.kind == "s3-stall" else ""
        return f"{self.kind}{extra} @ {where}"


def chaos_seed() -> int:
    """KUBECPT_CHAOS_SEED if set (to replay a failing run), else a fresh one; the caller prints it."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1, 10**6)


def schedule(seed: int, first_step: int, last_step: int) -> list[Fault]:
    """The faults in firing order: preprocess, then training (strictly increasing steps in
    [first_step, last_step]), then evaluation. The pod kill of a phase comes first in it (its window is short)."""
    rng = random.Random(seed)
    phases = (PREPROCESS, TRAINING, EVALUATION)
    placed: list[tuple[str, str]] = [("preprocess-kill", PREPROCESS), ("eval-kill", EVALUATION)]
    placed += [("train-sigkill", TRAINING), ("train-sigterm", TRAINING)]
    placed += [(kind, rng.choice(phases)) for kind in (*CLUSTER_KINDS, "s3-reset", "s3-stall")]
    placed += [(rng.choice(EXTRA_KINDS), rng.choice(phases)) for _ in range(EXTRA)]
    training = [kind for kind, phase in placed if phase == TRAINING]
    rng.shuffle(training)
    steps = sorted(rng.sample(range(first_step, last_step + 1), len(training)))
    out = [_fault(rng, kind, PREPROCESS) for kind, phase in placed if phase == PREPROCESS]
    out += [_fault(rng, kind, TRAINING, step) for kind, step in zip(training, steps, strict=True)]
    out += [_fault(rng, kind, EVALUATION) for kind, phase in placed if phase == EVALUATION]
    return out


def _fault(rng: random.Random, kind: str, phase: str, step: int = 0) -> Fault:
    count = rng.randint(1, 3) if kind in S3_KINDS else 1
    seconds = float(rng.randint(2, 8)) if kind == "s3-stall" else 0.0
    return Fault(kind, phase, step, count, seconds)


def _running(pod: dict[str, Any]) -> bool:
    """Running, not being deleted, and its container started (so it has a process to kill)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return (
        "deletionTimestamp" not in pod["metadata"]
        and pod.get("status", {}).get("phase") == "Running"
        and bool(statuses)
        and all("running" in s.get("state", {}) for s in statuses)
    )


@dataclass
class Observed:
    """One look at the chaos run: its status and its pods by stage."""

    status: dict[str, Any]
    pods: dict[str, list[dict[str, Any]]]

    def condition(self, kind: str) -> bool:
        return any(c["type"] == kind and c["status"] == "True" for c in self.status.get("conditions") or [])

    def running(self, stage: str, prefix: str = "") -> list[dict[str, Any]]:
        return [p for p in self.pods.get(stage, []) if _running(p) and p["metadata"]["name"].startswith(prefix)]

    def step(self) -> int:
        return int((self.status.get("training") or {}).get("step") or 0)


@dataclass
class ChaosDriver:
    """Fires `faults` in order at the run `run`, each once its trigger is observed; `log` says what fired."""

    cluster: Any  # tests.cluster.cluster.Cluster
    node: Any  # tests.e2e.node.RealNode
    operator: Any  # tests.operator.process.Operator
    proxy: S3FaultProxy
    run: str
    namespace: str
    faults: list[Fault]
    training_pods: int
    log: list[str] = field(default_factory=list)
    fired: int = 0
    started: float = field(default_factory=time.monotonic)

    def observe(self) -> Observed:
        result = self.cluster.kubectl(
            "get", "cpt,pods", "-n", self.namespace, "-l", f"cpt.kubecpt.dev/run={self.run}", "-o", "json", check=False
        )
        items = json.loads(result.stdout)["items"] if result.returncode == 0 else []
        status = next((i.get("status") or {} for i in items if i["kind"] == "ContinuedPretrain"), {})
        if not status:  # the resource itself carries no run label: read it by name
            obj = self.cluster.kubectl("get", "cpt", self.run, "-n", self.namespace, "-o", "json", check=False)
            status = (json.loads(obj.stdout).get("status") or {}) if obj.returncode == 0 else {}
        pods: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            if item["kind"] == "Pod":
                pods.setdefault(item["metadata"]["labels"].get("cpt.kubecpt.dev/stage", ""), []).append(item)
        return Observed(status, pods)

    def done(self) -> bool:
        return self.fired == len(self.faults)

    def poll(self) -> None:
        """Fire every fault whose trigger holds now (in order); fails if a fault's window has passed."""
        while not self.done():
            fault, seen = self.faults[self.fired], self.observe()
            if not self._triggered(fault, seen):
                self._check_window(fault, seen)
                return
            detail = self._fire(fault, seen)
            if detail is None:  # the pod's container exited meanwhile: look again
                return
            self.fired += 1
            line = f"[{time.monotonic() - self.started:7.1f}s] {fault.describe()}: {detail} (step {seen.step()})"
            self.log.append(line)
            print("chaos:", line, flush=True)

    def _triggered(self, fault: Fault, seen: Observed) -> bool:
        if fault.phase == PREPROCESS:
            return fault.kind != "preprocess-kill" or bool(seen.running("preprocess"))  # the kill goes first
        if fault.phase == TRAINING:
            pods = seen.running("train")
            if len(pods) != self.training_pods or seen.step() < fault.step:
                return False
            # the status keeps the last gang's step until the new one reports: ask the running rank 0
            return self._logged_step(pods) >= fault.step
        # evaluation: the training faults have fired; first a milestone's evaluation pod is killed, the rest follow
        if fault.kind == "eval-kill":
            return bool(seen.running("evaluate", f"{self.run}-eval-tokens"))
        return True

    def _logged_step(self, pods: list[dict[str, Any]]) -> int:
        """The last step the running gang's node 0 logged (0 before its first)."""
        name = next(p["metadata"]["name"] for p in pods if "-node-0-0-" in p["metadata"]["name"])
        log = self.cluster.kubectl("logs", name, "-n", self.namespace, "--tail=50", check=False).stdout
        steps = [json.loads(line)["step"] for line in log.splitlines() if line.startswith('{"event": "train_step"')]
        return steps[-1] if steps else 0

    def _check_window(self, fault: Fault, seen: Observed) -> None:
        missed = (fault.phase == PREPROCESS and seen.condition("DataReady")) or (
            fault.phase == TRAINING and seen.condition("Trained")
        )
        missed = missed or seen.condition("Evaluated") or seen.status.get("phase") in ("Succeeded", "Failed")
        assert not missed, (
            f"chaos: {fault.describe()} never triggered (status {seen.status.get('phase')})\n" + "\n".join(self.log)
        )

    def _fire(self, fault: Fault, seen: Observed) -> str | None:
        kind = fault.kind
        if kind == "preprocess-kill":
            return self._sigkill(seen.running("preprocess"), fault)
        if kind == "eval-kill":
            return self._sigkill(seen.running("evaluate", f"{self.run}-eval-tokens"), fault)
        if kind == "train-sigkill":
            return self._sigkill(seen.running("train"), fault)
        if kind == "train-sigterm":
            pod = self._pick(seen.running("train"), fault)
            self.cluster.kubectl("delete", "pod", pod, "-n", self.namespace, "--wait=false")
            return f"deleted {pod} gracefully (SIGTERM)"
        if kind == "operator-kill":
            assert self.operator.process is not None
            self.operator.process.send_signal(signal.SIGKILL)
            self.operator.process.wait()
            self.operator.start()
            return "operator SIGKILLed and started again"
        if kind == "kubelet-restart":
            self.node.restart_kubelet()
            return "kubelet stopped (SIGTERM) and started again, healthy"
        s3 = {"s3-reset": "reset", "s3-stall": "stall", "s3-slowdown": "slowdown"}[kind]
        self.proxy.add(ProxyFault(s3, fault.count, seconds=fault.seconds))
        return f"armed {fault.count} {s3} on the run's S3 endpoint"

    def _pick(self, pods: list[dict[str, Any]], fault: Fault) -> str:
        names = sorted(p["metadata"]["name"] for p in pods)
        return names[(fault.step + self.fired) % len(names)]  # deterministic given the schedule and the pods

    def _sigkill(self, pods: list[dict[str, Any]], fault: Fault) -> str | None:
        name = self._pick(pods, fault)
        pod = next(p for p in pods if p["metadata"]["name"] == name)
        container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        return f"SIGKILL to {name}'s container" if self.node.kill_container(container) else None
