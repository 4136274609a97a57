"""How the operator copes with many runs at once: 100 ContinuedPretrains applied in one `kubectl apply`.

It starts the test control plane (tests/cluster: real API server, etcd, controllers, JobSet controller),
runs the operator as a process (`python -P -m cpt_operator --namespace scale`), applies N resources at
once and prints the seconds until every run has its first child (the spec ConfigMap) and until every run
has all of its first-stage children (ServiceAccount, Role, RoleBinding, baseline evaluation and
preprocess Jobs), plus the operator's peak resident memory (VmHWM). The runs are suspended, so the
figures measure the operator (listing, deciding, creating, writing status), not kwok's pod churn.
Goal: < 30 s and < 200 MB for 100 runs.

    python -P bench/operator_scale.py [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_doc(name: str) -> dict:
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": name, "namespace": "scale"},
        "spec": {
            "model": {"uri": "facebook/MobileLLM-125M"},
            "data": {"sources": [{"name": "edu", "uri": "s3://b/edu/*.jsonl"}], "tokenBudget": 10**9},
            "storage": {"uri": f"s3://runs/{name}"},
            "suspend": True,
        },
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    from tests.cluster.cluster import Cluster, build_binaries, free_port

    with (
        tempfile.TemporaryDirectory(prefix="kubecpt-scale-") as scratch,
        Cluster(workdir=Path(scratch) / "cluster", bin_dir=build_binaries()) as cluster,
    ):
        cluster.kubectl(
            "apply", "--server-side", "-f", str(REPO / "manifests/crd/continuedpretrains.cpt.kubecpt.dev.yaml")
        )
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/continuedpretrains.cpt.kubecpt.dev", "--timeout=60s"
        )
        cluster.kubectl("create", "namespace", "scale")
        log = (Path(scratch) / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "cpt_operator",
                "--namespace",
                "scale",
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
            ],
            cwd=REPO,
            env={**cluster.env(), "KUBECPT_METRICS_PORT": str(free_port()), "KUBECPT_METRICS_ADDRESS": "127.0.0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(3)  # the operator is watching
            docs = "\n---\n".join(json.dumps(run_doc(f"run-{i:03d}")) for i in range(args.runs))
            start = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=docs, timeout=300)
            first = full = None
            while time.monotonic() - start < 300:
                if operator.poll() is not None:
                    raise SystemExit(f"the operator exited with {operator.returncode}; see {log.name}")
                configmaps = cluster.get_json("configmaps", "-n", "scale", "-l", "cpt.kubecpt.dev/run")["items"]
                if (
                    first is None
                    and len({c["metadata"]["labels"]["cpt.kubecpt.dev/run"] for c in configmaps}) >= args.runs
                ):
                    first = time.monotonic() - start
                jobs = cluster.get_json("jobs", "-n", "scale", "-l", "cpt.kubecpt.dev/stage=preprocess")["items"]
                if first is not None and len(jobs) >= args.runs:
                    full = time.monotonic() - start
                    break
                time.sleep(0.5)
            rss = peak_rss_mb(operator.pid)
        finally:
            operator.terminate()
            operator.wait(30)
    if first is None or full is None:
        raise SystemExit("not every run got its children within 300 s")
    print(f"{args.runs} runs applied at once; operator: 1 process, kopf event handlers")
    print(f"every run has its first child after {first:.1f} s (goal < 30 s: {first / 30:.2f}x of the budget)")
    print(f"every run has its first-stage Jobs after {full:.1f} s")
    print(f"operator peak RSS: {rss:.0f} MB (goal < 200 MB: {rss / 200:.2f}x of the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
