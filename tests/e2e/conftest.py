"""Fixtures of the end-to-end tests: the test cluster with a real node, the local images, S3 reachable from
pods, and the operator configured with the worker pod template this node needs.

Needs root and the node's Debian packages (scripts/install-node-packages.sh); without them the tests fail
with what is missing, never skip. At the end of the session the node is stopped and a check fails the run if
any process, mount, iptables chain, cgroup, interface or sysctl change is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cluster.cluster import Cluster, build_binaries
from tests.conftest import REPO, start_moto
from tests.e2e.node import NODE_ADDRESS, NodeError, RealNode

WORKER_IMAGE = "kubecpt.local/worker:dev"
PAUSE_IMAGE = "kubecpt.local/pause:dev"
OPERATOR_IMAGE = "kubecpt.local/operator:dev"
# Another image (its own version label, so its own digest): what the helm upgrade test rolls the operator to.
NEXT_OPERATOR_IMAGE = "kubecpt.local/operator:next"


def build_images(bin_dir: Path, out: Path) -> list[Path]:
    """The pause, worker and operator images (and the operator's next version), written by the project's own
    script (images/local/build.py)."""
    script = REPO / "images" / "local" / "build.py"
    worker, pause, operator, following = (out / f"{n}.tar" for n in ("worker", "pause", "operator", "operator-next"))
    venv = Path(sys.prefix)
    for argv in (
        ["worker", "--venv", str(venv), "--out", str(worker), "--name", WORKER_IMAGE],
        ["operator", "--venv", str(venv), "--out", str(operator), "--name", OPERATOR_IMAGE],
        ["operator", "--venv", str(venv), "--out", str(following), "--name", NEXT_OPERATOR_IMAGE, "--version", "next"],
        ["pause", "--binary", str(bin_dir / "pause"), "--out", str(pause), "--name", PAUSE_IMAGE],
    ):
        subprocess.run([sys.executable, str(script), *argv], check=True, capture_output=True)
    return [pause, worker, operator, following]


def host_paths() -> list[str]:
    """What the local images leave to the node: /usr and /etc/alternatives (the compiler DeepSpeed's CPU op is
    built with), the Python installation, the venv and the checkout (the production images carry them; see
    images/README.md)."""
    paths = ["/usr", "/etc/alternatives", sys.base_prefix, str(REPO)]
    venv = Path(sys.prefix)
    if not venv.is_relative_to(REPO):
        # a worktree's venv belongs to another checkout, where its editable install points
        paths.append(str(venv.parent if (venv.parent / "pyproject.toml").exists() else venv))
    return paths


def host_environment() -> tuple[list[dict], list[dict]]:
    """hostPath volumes and read-only mounts of host_paths(), for the chart-installed operator's own pod."""
    volumes, mounts = [], []
    for index, path in enumerate(host_paths()):
        volumes.append({"name": f"host-{index}", "hostPath": {"path": path, "type": "Directory"}})
        mounts.append({"name": f"host-{index}", "mountPath": path, "readOnly": True})
    return volumes, mounts


WORKER_USER = 1000  # the production worker image's numeric USER (images/worker/Dockerfile)


@dataclass(frozen=True)
class HostVolume:
    """A folder of this machine that every stage pod mounts, through a claim the test's admin binds to it."""

    name: str
    path: str
    read_only: bool = True

    def objects(self, namespace: str) -> list[dict]:
        """A hostPath PersistentVolume (the admin's, cluster-wide) pre-bound to a claim in `namespace`: Pod
        Security `restricted` refuses hostPath volumes in pods but allows claims."""
        mode = ["ReadOnlyMany"] if self.read_only else ["ReadWriteMany"]
        size = {"storage": "1Gi"}
        pv_name = f"{namespace}-{self.name}"
        return [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": size,
                    "accessModes": mode,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": self.path, "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": self.name},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": self.name, "namespace": namespace},
                "spec": {
                    "accessModes": mode,
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": size},
                },
            },
        ]


def worker_host_volumes(extensions: Path) -> list[HostVolume]:
    """What the local worker image leaves to the node (host_paths()), the folders of PYTHONPATH
    (a worktree's code; empty in CI) and the shared, writable DeepSpeed op cache."""
    paths = host_paths()
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).is_dir()]
    volumes = [HostVolume(f"host-{index}", path) for index, path in enumerate(paths)]
    return [*volumes, HostVolume("torch-extensions", str(extensions), read_only=False)]


def worker_pod_template(volumes: list[HostVolume], extensions_volume: str = "torch-extensions") -> dict:
    """Every stage pod mounts the host folders through their claims, at the same paths, and runs as the
    production image's non-root user: the pods pass Pod Security `restricted`. DeepSpeed's CPU op is compiled
    once by the first pod and cached for the others (TORCH_EXTENSIONS_DIR; torch locks it while one pod
    builds)."""
    pod_volumes, mounts = [], []
    for volume in volumes:
        claim = {"claimName": volume.name, "readOnly": volume.read_only}
        pod_volumes.append({"name": volume.name, "persistentVolumeClaim": claim})
        path = "/torch-extensions" if volume.name == extensions_volume else volume.path
        mounts.append({"name": volume.name, "mountPath": path, "readOnly": volume.read_only})
    env = [{"name": "TORCH_EXTENSIONS_DIR", "value": "/torch-extensions"}]
    if os.environ.get("PYTHONPATH"):
        env.append({"name": "PYTHONPATH", "value": os.environ["PYTHONPATH"]})
    security = {"runAsUser": WORKER_USER, "runAsGroup": WORKER_USER}
    return {"volumes": pod_volumes, "securityContext": security, "container": {"volumeMounts": mounts, "env": env}}


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
def worker_volumes(tmp_path_factory: pytest.TempPathFactory) -> list[HostVolume]:
    extensions = tmp_path_factory.mktemp("torch-extensions")
    extensions.chmod(0o777)  # written by the pods' non-root user
    return worker_host_volumes(extensions)


@pytest.fixture(scope="session")
def template_file(tmp_path_factory: pytest.TempPathFactory, worker_volumes: list[HostVolume]) -> Path:
    path = tmp_path_factory.mktemp("operator") / "worker-pod-template.yaml"
    path.write_text(yaml.safe_dump(worker_pod_template(worker_volumes)))
    return path
