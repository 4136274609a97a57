"""Fixtures of the end-to-end tests: the test cluster with a real node, the local images, S3 reachable from
pods, and the operator configured with the worker pod template this node needs.

Needs root and the node's Debian packages (scripts/install-node-packages.sh); without them the tests fail
with what is missing, never skip. At the end of the session the node is stopped and a check fails the run if
any process, mount, iptables chain, cgroup, interface or sysctl change is left behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.cluster import Cluster, build_binaries
from tests.conftest import REPO, start_moto
from tests.e2e.node import NODE_ADDRESS, NodeError, RealNode

WORKER_IMAGE = "kubecpt.local/worker:dev"
PAUSE_IMAGE = "kubecpt.local/pause:dev"
OPERATOR_IMAGE = "kubecpt.local/operator:dev"


def build_images(bin_dir: Path, out: Path) -> list[Path]:
    """The pause, worker and operator images, written by the project's own script (images/local/build.py)."""
    script = REPO / "images" / "local" / "build.py"
    worker, pause, operator = out / "worker.tar", out / "pause.tar", out / "operator.tar"
    venv = Path(sys.prefix)
    for argv in (
        ["worker", "--venv", str(venv), "--out", str(worker), "--name", WORKER_IMAGE],
        ["operator", "--venv", str(venv), "--out", str(operator), "--name", OPERATOR_IMAGE],
        ["pause", "--binary", str(bin_dir / "pause"), "--out", str(pause), "--name", PAUSE_IMAGE],
    ):
        subprocess.run([sys.executable, str(script), *argv], check=True, capture_output=True)
    return [pause, worker, operator]


def host_environment() -> tuple[list[dict], list[dict]]:
    """hostPath volumes and read-only mounts of what the local images leave to the node: /usr and
    /etc/alternatives (the compiler DeepSpeed's CPU op is built with), the Python installation, the venv and the
    checkout (the production images carry them; see images/README.md)."""
    paths = ["/usr", "/etc/alternatives", sys.base_prefix, str(REPO)]
    if not Path(sys.prefix).is_relative_to(REPO):
        paths.append(sys.prefix)
    volumes, mounts = [], []
    for index, path in enumerate(paths):
        volumes.append({"name": f"host-{index}", "hostPath": {"path": path, "type": "Directory"}})
        mounts.append({"name": f"host-{index}", "mountPath": path, "readOnly": True})
    return volumes, mounts


def worker_pod_template(extensions: Path) -> dict:
    """The host environment for every stage pod, and DeepSpeed's CPU op, compiled once by the first pod, cached in
    `extensions` for the others (TORCH_EXTENSIONS_DIR; torch locks it while one pod builds)."""
    volumes, mounts = host_environment()
    volumes.append({"name": "torch-extensions", "hostPath": {"path": str(extensions), "type": "Directory"}})
    mounts.append({"name": "torch-extensions", "mountPath": "/torch-extensions"})
    env = [{"name": "TORCH_EXTENSIONS_DIR", "value": "/torch-extensions"}]
    # The node's Python lives under /root (mode 700) on the test machine: the pods run as root, the rest of the
    # operator's restricted security context (no privilege escalation, no capabilities, RuntimeDefault seccomp)
    # stays. The production image runs as its non-root USER.
    security = {"runAsUser": 0, "runAsNonRoot": False}
    return {"volumes": volumes, "securityContext": security, "container": {"volumeMounts": mounts, "env": env}}


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory):
    """The test cluster with its API server on the node's bridge address and one real node."""
    workdir = tmp_path_factory.mktemp("e2e")
    bin_dir = build_binaries()
    cluster = Cluster(workdir=workdir / "cluster", bin_dir=bin_dir, gpu_nodes=0, address=NODE_ADDRESS)
    real = RealNode(cluster, workdir / "node", images=build_images(bin_dir, workdir / "images"))
    real.start()
    try:
        yield real
    finally:
        real.stop()
        left = real.leftovers()
        print(f"\nend-to-end logs kept in {workdir}")
        if left:
            raise NodeError("the real node left state on the host:\n" + "\n".join(left))


@pytest.fixture(scope="session")
def pod_s3(tmp_path_factory: pytest.TempPathFactory):
    """The moto S3 server on the node's address, where pods reach it; yields its endpoint."""
    with start_moto(NODE_ADDRESS, tmp_path_factory.mktemp("moto-e2e")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def template_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("operator") / "worker-pod-template.yaml"
    path.write_text(yaml.safe_dump(worker_pod_template(tmp_path_factory.mktemp("torch-extensions"))))
    return path
