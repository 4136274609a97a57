"""How the operator copes with many runs: N ContinuedPretrains applied in one `kubectl apply`, then a steady state of
M runs whose status is pushed every 2 s (as training pods push progress), then SIGTERM.

It starts the test control plane (tests/cluster: real API server, etcd, controllers, JobSet controller), runs the
operator as a process (`python -P -m cpt_operator --namespace scale`) and prints:
- the seconds from the apply until every run has its first child (the spec ConfigMap), the apply included, and
  until every run has its first-stage Jobs;
- in the steady state, the operator's API requests per status push (its own counter,
  kubecpt_api_requests_total, plus the Events it posted) and its CPU in cores, against the pushes made;
- its peak resident memory (VmHWM), and the seconds from SIGTERM to its exit.
The runs are suspended, so the figures measure the operator (deciding, creating, writing status), not kwok.
Goals (issue 21): N=1000 to first child < 60 s, RSS < 300 MB; steady state < 1 request per push and
< 0.5 core; exit < 20 s after SIGTERM.

    python -P bench/operator_scale.py [--runs 1000] [--steady-runs 200] [--steady-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
NAMESPACE = "scale"
PUSH_SECONDS = 2.0


def run_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": "facebook/MobileLLM-125M"},
            "data": {"sources": [{"name": "edu", "uri": "s3://b/edu/*.jsonl"}], "tokenBudget": 10**9},
            "storage": {"uri": f"s3://runs/{name}"},
            "suspend": True,
        },
    }


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def scrape(port: int) -> dict[str, float]:
    """The operator's request and event counters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    requests = sum(float(v) for v in re.findall(r"^kubecpt_api_requests_total\{[^}]*\} (\S+)$", text, re.M))
    events = re.search(r"^kubecpt_events_posted_total (\S+)$", text, re.M)
    return {"requests": requests, "events": float(events.group(1)) if events else 0.0}


def count(cluster: Any, kind: str, selector: str) -> int:
    """Objects of a kind with a label (names only: the poll must not load the machine it measures)."""
    listed = cluster.kubectl("get", kind, "-n", NAMESPACE, "-l", selector, "-o", "name").stdout
    return len(listed.split())


def time_to_children(cluster: Any, operator: subprocess.Popen[bytes], runs: int, start: float) -> tuple[float, float]:
    """Seconds until every run has its spec ConfigMap, and its preprocess Job."""
    first = None
    while time.monotonic() - start < 600:
        if operator.poll() is not None:
            raise SystemExit(f"the operator exited with {operator.returncode}")
        if first is None and count(cluster, "configmaps", "cpt.kubecpt.dev/run") >= runs:  # one spec ConfigMap each
            first = time.monotonic() - start
        if first is not None and count(cluster, "jobs", "cpt.kubecpt.dev/stage=preprocess") >= runs:
            return first, time.monotonic() - start
        time.sleep(1.0)
    raise SystemExit("not every run got its children within 600 s")


def push_progress(cluster: Any, names: list[str], seconds: float) -> int:
    """Patch each run's status.training every PUSH_SECONDS for `seconds`, as training pods do; returns the pushes."""
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))
    pushes = 0
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(share: list[str]) -> None:
        nonlocal pushes
        step = 0
        while time.monotonic() < end:
            tick = time.monotonic()
            step += 1
            for name in share:
                body = {"status": {"training": {"step": step, "tokensSeen": step * 1024, "loss": 2.0 - step / 1e4}}}
                api.patch_namespaced_custom_object_status(
                    "cpt.kubecpt.dev", "v1alpha1", NAMESPACE, "continuedpretrains", name, body
                )
                with lock:
                    pushes += 1
            time.sleep(max(0.0, PUSH_SECONDS - (time.monotonic() - tick)))

    shares = [names[i::8] for i in range(8)]
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pushes


def start_operator(cluster: Any, scratch: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    from tests.cluster.cluster import free_port

    return subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "cpt_operator",
            "--namespace",
            NAMESPACE,
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
        ],
        cwd=REPO,
        env={
            **cluster.env(),
            "KUBECPT_METRICS_PORT": str(metrics_port),
            "KUBECPT_METRICS_ADDRESS": "127.0.0.1",
            "MALLOC_ARENA_MAX": "2",  # as the Helm chart's Deployment sets it
        },
        stdout=(scratch / "operator.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop(operator: subprocess.Popen[bytes]) -> float:
    """Seconds from SIGTERM to exit (killed after 60 s: reported as such)."""
    start = time.monotonic()
    operator.send_signal(signal.SIGTERM)
    try:
        operator.wait(60)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait()
        return float("inf")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steady-runs", type=int, default=200)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    args = parser.parse_args()

    from tests.cluster.cluster import Cluster, build_binaries, free_port

    with (
        tempfile.TemporaryDirectory(prefix="kubecpt-scale-") as scratch,
        Cluster(workdir=Path(scratch) / "cluster", bin_dir=build_binaries()) as cluster,
    ):
        crd = REPO / "manifests/crd/continuedpretrains.cpt.kubecpt.dev.yaml"
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.wait_established("continuedpretrains.cpt.kubecpt.dev")
        cluster.kubectl("create", "namespace", NAMESPACE)
        metrics_port = free_port()
        operator = start_operator(cluster, Path(scratch), metrics_port)
        try:
            time.sleep(5)  # the operator is watching
            docs = "\n---\n".join(json.dumps(run_doc(f"run-{i:04d}")) for i in range(args.runs))
            start = time.monotonic()
            cluster.kubectl("apply", "--server-side", "-f", "-", input=docs, timeout=600)  # as Argo CD and Flux do
            applied = time.monotonic() - start
            first, full = time_to_children(cluster, operator, args.runs, start)
            time.sleep(5)  # the last passes settle
            before, cpu_before, wall = scrape(metrics_port), cpu_seconds(operator.pid), time.monotonic()
            pushes = push_progress(cluster, [f"run-{i:04d}" for i in range(args.steady_runs)], args.steady_seconds)
            after, cpu_after, wall = scrape(metrics_port), cpu_seconds(operator.pid), time.monotonic() - wall
            rss = proc_status(operator.pid, "VmHWM")
        finally:
            exit_seconds = stop(operator)
    made = (after["requests"] - before["requests"]) + (after["events"] - before["events"])
    cores = (cpu_after - cpu_before) / wall
    print(f"{args.runs} runs applied at once; operator: 1 process, watch caches (kopf indices)")
    print(f"every run has its first child after {first:.1f} s (goal < 60 s: {first / 60:.2f}x of the budget)")
    print(f"  (kubectl apply --server-side of the {args.runs} runs took {applied:.1f} s of that)")
    print(f"every run has its first-stage Jobs after {full:.1f} s")
    print(
        f"steady state: {args.steady_runs} runs pushed every {PUSH_SECONDS:.0f} s for {wall:.0f} s: {pushes} pushes "
        f"({pushes / wall:.1f}/s); the operator made {made:.0f} API requests ({made / max(pushes, 1):.3f} per push, "
        f"goal < 1) and used {cores:.2f} cores (goal < 0.5: {cores / 0.5:.2f}x of the budget)"
    )
    print(f"operator peak RSS: {rss:.0f} MB (goal < 300 MB: {rss / 300:.2f}x of the budget)")
    print(f"operator exit after SIGTERM: {exit_seconds:.1f} s (goal < 20 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
