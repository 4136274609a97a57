"""A real Kubernetes control plane on loopback for the tests (envtest + KWOK style).

etcd, kube-apiserver (client-cert auth, RBAC, service-account issuer), kube-controller-manager (Job
controller, garbage collector, ...), kube-scheduler, and kwok simulating fake GPU nodes. All binaries are
built from source by build.sh. Ports are picked free on 127.0.0.1. Processes are stopped by PID and
their logs are kept in the work directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.pki import SERVICE_CIDR, Pki, make_pki, self_signed

# Pod and node addresses (fake, handed out by kwok) come from the benchmarking range too, never a private one.
POD_CIDR = "198.18.0.1/17"
NODE_IP = "198.18.254.1"

HERE = Path(__file__).resolve().parent
KWOK_SELECTOR = "kwok.x-k8s.io/node=fake"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"


class ClusterError(RuntimeError):
    """A component failed to build or start; the message names it and its log."""


def build_binaries() -> Path:
    """Run build.sh (cached after the first build) and return the directory of the binaries."""
    result = subprocess.run(["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise ClusterError(f"tests/cluster/build.sh failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def versions() -> dict[str, str]:
    """The pinned versions from versions.env."""
    lines = (line.strip() for line in (HERE / "versions.env").read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Component:
    """One running binary, with its log file."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        handle.close()

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ClusterError(f"{self.name} exited with {self.process.returncode}; log: {self.log}\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by PID, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def wait_for(what: str, probe: Callable[[], bool], timeout: float, alive: Callable[[], None]) -> None:
    """Poll probe until it returns True, failing early when the component died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        alive()
        try:
            if probe():
                return
        except Exception as error:  # a refused connection while starting is expected
            last_error = error
        time.sleep(0.25)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


@dataclass
class Cluster:
    """The whole control plane. Use start()/stop() or a context manager."""

    workdir: Path
    bin_dir: Path
    gpu_nodes: int = 2
    address: str = "127.0.0.1"  # where the API server listens; a real node's pods need a non-loopback one
    components: list[Component] = field(default_factory=list)
    api_port: int = 0
    pki: Pki | None = None

    # -- paths and clients -------------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm/kopf subprocesses: only this cluster, no user config."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            HOME=str(self.workdir / "home"),
            HELM_CACHE_HOME=str(self.workdir / "helm/cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm/config"),
            HELM_DATA_HOME=str(self.workdir / "helm/data"),
        )
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self._run([self.binary("kubectl"), *args], input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([self.binary("helm"), *args], None, check, timeout)

    def token_kubeconfig(self, account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig at `path` that acts as ServiceAccount `namespace/account` (a one-hour token)."""
        token = self.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(yaml.safe_dump(config))
        return path

    def _run(
        self, argv: Sequence[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:3])} ... failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Poll until the CRD is Established (`kubectl wait` fails while the CRD has no status yet)."""

        def established() -> bool:
            conditions = self.get_json("crd", crd).get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_for(f"CRD {crd} Established", established, timeout, self.components[0].check_alive)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        docs = obj if isinstance(obj, list) else [obj]
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def raw_get(self, path: str, timeout: float = 5) -> str:
        """GET a path of the API server as the admin user."""
        with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=timeout) as response:
            return response.read().decode()

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        self.pki = make_pki(self.workdir / "pki", self.address)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controllers()
            self._start_kwok()
            self._start_jobset()
            self._create_gpu_nodes()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def logs(self) -> dict[str, Path]:
        return {c.name: c.log for c in self.components}

    def _launch(self, name: str, argv: list[str]) -> Component:
        component = Component(name, argv, self.workdir / f"{name}.log")
        component.start()
        self.components.append(component)
        return component

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        etcd = self._launch(
            "etcd",
            [
                self.binary("etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self.etcd_url = f"http://127.0.0.1:{client}"

        def healthy() -> bool:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as response:
                return json.loads(response.read()).get("health") == "true"

        wait_for("etcd /health", healthy, 60, etcd.check_alive)

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        self.api_port = free_port()
        apiserver = self._launch(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                "--authorization-mode=RBAC",
                # On by default since 1.25; named so that a namespace's pod-security.kubernetes.io/enforce label is
                # enforced here whatever the defaults become (the end-to-end runs are in a `restricted` namespace).
                "--enable-admission-plugins=PodSecurity",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.pki.sa_public}",
                f"--service-account-signing-key-file={self.pki.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                # On loopback no pod could reach the endpoint; on a real address the kubernetes Service gets it.
                f"--endpoint-reconciler-type={'none' if self.address == '127.0.0.1' else 'lease'}",
                # `kubectl logs` on a real node: the kubelet is reached at its InternalIP with the admin cert.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={self.pki.admin_cert}",
                f"--kubelet-client-key={self.pki.admin_key}",
            ],
        )
        wait_for("kube-apiserver /readyz", lambda: self.raw_get("/readyz") == "ok", 120, apiserver.check_alive)

    def _write_kubeconfig(self) -> None:
        assert self.pki is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kubecpt-test",
            "clusters": [
                {
                    "name": "kubecpt-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)},
                }
            ],
            "contexts": [{"name": "kubecpt-test", "context": {"cluster": "kubecpt-test", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _start_controllers(self) -> None:
        assert self.pki is not None
        kubeconfig = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        manager = self._launch(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={self.pki.sa_private}",
                f"--root-ca-file={self.pki.ca_cert}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam",
                "--concurrent-job-syncs=5",
            ],
        )
        scheduler = self._launch(
            "kube-scheduler",
            [
                self.binary("kube-scheduler"),
                *common,
                f"--secure-port={free_port()}",
            ],
        )
        # The default ServiceAccount exists once the controller-manager's serviceaccount controller runs.
        wait_for(
            "default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            90,
            manager.check_alive,
        )
        scheduler.check_alive()

    def _start_kwok(self) -> None:
        port = free_port()
        kwok = self._launch(
            "kwok",
            [
                self.binary("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={HERE / 'kwok-stages.yaml'}",
                *(f"--config={path}" for path in sorted((self.bin_dir / "kwok-stages").glob("*.yaml"))),
                "--node-lease-duration-seconds=40",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_SELECTOR}",
                f"--server-address=127.0.0.1:{port}",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_for("kwok /healthz", healthy, 60, kwok.check_alive)

    def _start_jobset(self) -> None:
        """The JobSet controller (built from its pinned module) with its CRD. Its webhooks are served on
        loopback but not registered with the API server: our children spell out every field the defaulting
        webhook would set, and the tests check the controller, not the webhook."""
        crd = self.bin_dir / "crds" / "jobset.x-k8s.io_jobsets.yaml"
        self.kubectl("apply", "--server-side", "-f", str(crd))

        self.wait_established("jobsets.jobset.x-k8s.io")
        certs = self.workdir / "jobset-certs"
        self_signed(certs, "127.0.0.1")
        probe = free_port()
        config = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "internalCertManagement": {"enable": False},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{probe}"},
            "leaderElection": {"leaderElect": False},
        }
        path = self.workdir / "jobset-config.yaml"
        path.write_text(yaml.safe_dump(config))
        jobset = self._launch("jobset", [self.binary("jobset"), f"--config={path}", f"--kubeconfig={self.kubeconfig}"])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe}/healthz", timeout=2) as response:
                return response.status == 200

        wait_for("jobset controller /healthz", healthy, 60, jobset.check_alive)

    def _create_gpu_nodes(self) -> None:
        if not self.gpu_nodes:
            return
        self.apply([gpu_node(f"gpu-node-{i}") for i in range(self.gpu_nodes)])

        def all_ready() -> bool:
            nodes = self.get_json("nodes")["items"]
            ready = [
                n
                for n in nodes
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", [])
                )
            ]
            return len(ready) == self.gpu_nodes

        wait_for("fake GPU nodes Ready", all_ready, 60, self.components[-1].check_alive)


def gpu_node(name: str, gpus: int = 8) -> dict[str, Any]:
    """A fake node that looks like an 8x A100 machine to the scheduler and to node selectors."""
    resources = {
        "cpu": "96",
        "memory": "1000Gi",
        "pods": "110",
        "nvidia.com/gpu": str(gpus),
        "ephemeral-storage": "2Ti",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus),
                "node.kubernetes.io/instance-type": "a100-80gb-x8",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }
