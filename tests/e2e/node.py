"""A real node for the test cluster: containerd + runc, the kubelet, kube-proxy (iptables), a CNI bridge and
CoreDNS, all on this machine, with nothing that can reach another one.

Addresses come from the benchmarking range: the bridge `kubecpt0` holds NODE_ADDRESS (the node's InternalIP,
the API server's address, the cluster DNS and the S3 server) and pods get addresses in POD_SUBNET. Nothing
masquerades, and a guard chain rejects any forwarded packet from the pod range that would leave through
another interface, so a misroute fails a test instead of reaching a network.

`stop()` removes everything the node created on the host (processes by PID, mounts, iptables chains, cgroups,
the bridge, the folders kubelet and containerd use outside the work directory, and the sysctls they changed),
and `leftovers()` lists anything still there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.cluster.cluster import Cluster, ClusterError, Component, free_port, wait_for

BRIDGE = "kubecpt0"
NODE_ADDRESS = "198.18.128.1"
BRIDGE_MAC = "02:00:c6:12:80:01"  # locally administered, from NODE_ADDRESS
POD_SUBNET = "198.18.128.0/24"
TEST_RANGE = "198.18.0.0/15"
NODE_NAME = "kubecpt-node"
GUARD = "KUBECPT-E2E-GUARD"
CNI_BIN = Path("/usr/lib/cni")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "iptables-save", "ip", "conntrack")
# Host paths the kubelet and containerd use whatever their configured roots; removed when they were absent.
HOST_PATHS = tuple(Path(p) for p in ("/var/lib/kubelet", "/run/containerd", "/var/lib/cni", "/etc/cni", "/run/netns"))
# Sysctls the kubelet, kube-proxy or the bridge plugin may change; restored on stop.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CGROUP_NAMES = ("kubepods", "kubepods.slice", "k8s.io")
OUR_PROCESSES = ("containerd", "containerd-shim", "kubelet", "kube-proxy", "coredns", "pause")


class NodeError(ClusterError):
    """The real node could not start or left something behind; the message names the component and its log."""


def run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=120)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def external_interface() -> str | None:
    """The interface of the default route: no test packet may leave through it."""
    match = re.search(r"default .*?dev (\S+)", run("ip", "-4", "route", "show", "default", check=False).stdout)
    return match.group(1) if match else None


def preflight() -> None:
    """Fail loudly (not skip) when this machine cannot host the node, naming what is missing."""
    if os.geteuid() != 0:
        raise NodeError("the end-to-end tests need root (containerd, kubelet, iptables): run them as root")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [str(CNI_BIN / p) for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).exists()]
    if missing:
        raise NodeError(
            f"missing on this machine: {', '.join(missing)} (install with scripts/install-node-packages.sh)"
        )
    if Path("/sys/class/net", BRIDGE).exists():
        raise NodeError(f"interface {BRIDGE} already exists: another end-to-end run is active or did not clean up")


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _our_mounts(roots: list[Path]) -> list[str]:
    prefixes = tuple(str(r) for r in roots)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefixes):
            mounts.append(point)
    return mounts


def _cgroup_dirs() -> list[Path]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        for name in CGROUP_NAMES:
            if (controller / name).is_dir():
                found.append(controller / name)
    return found


def _kube_chains(tool: str) -> dict[str, list[str]]:
    """KUBE-* and guard chains per table, from iptables-save (or ip6tables-save)."""
    if shutil.which(tool) is None:
        return {}
    chains: dict[str, list[str]] = {}
    table = ""
    for line in run(tool, check=False).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and (line[1:].startswith("KUBE-") or line[1:].startswith(GUARD)):
            chains.setdefault(table, []).append(line[1:].split()[0])
    return chains


def remove_kube_chains() -> None:
    """Delete every rule that jumps to a KUBE-*/guard chain, then those chains, in every table, v4 and v6."""
    for family in ("iptables", "ip6tables"):
        save = f"{family}-save"
        for table, chains in _kube_chains(save).items():
            for line in run(save, "-t", table, check=False).stdout.splitlines():
                match = re.match(r"-A (\S+) (.*)", line)
                if match and match.group(1) not in chains and re.search(r"-j (KUBE-|" + GUARD + ")", line):
                    run(family, "-t", table, "-D", match.group(1), *_split_rule(match.group(2)), check=False)
            for chain in chains:
                run(family, "-t", table, "-F", chain, check=False)
            for chain in chains:
                run(family, "-t", table, "-X", chain, check=False)


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _pids_of_ours(roots: list[Path]) -> list[str]:
    """Processes still running that the node started: by executable name under our roots or our binaries."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        exe = cmdline.split(" ", 1)[0]
        try:
            in_pod = "/kubepods" in (proc / "cgroup").read_text()
        except OSError:
            in_pod = False
        if in_pod or any(str(root) in cmdline for root in roots) or os.path.basename(exe) in OUR_PROCESSES:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@dataclass
class RealNode:
    """The test cluster (its API server on NODE_ADDRESS) with one real node: start() brings up the bridge,
    then the control plane, then the node; stop() takes them down in reverse and cleans the host."""

    cluster: Cluster
    workdir: Path
    images: list[Path] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    sysctls: dict[str, str | None] = field(default_factory=dict)
    absent_paths: list[Path] = field(default_factory=list)
    started_network: bool = False
    kubelet_healthz: int = 0

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def binary(self, name: str) -> str:
        return self.cluster.binary(name)

    def _launch(self, name: str, argv: list[str]) -> Component:
        component = Component(name, argv, self.workdir / f"{name}.log")
        component.start()
        self.components.append(component)
        return component

    # -- start --------------------------------------------------------------------------------------
    def start(self) -> None:
        preflight()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sysctls = {name: _read_sysctl(name) for name in SYSCTLS}
        self.absent_paths = [path for path in HOST_PATHS if not path.exists()]
        try:
            self._network()
            self.cluster.start()
            self._containerd()
            self._coredns()
            self._kubelet()
            self._kube_proxy()
        except BaseException:
            self.stop()
            raise

    def _network(self) -> None:
        self.started_network = True
        # A fixed address: a bridge without one takes the lowest MAC of its ports, so it changes whenever a pod's
        # veth comes or goes, and pods keep the gateway's old MAC in their ARP cache: for up to a minute they
        # cannot reach the API server, DNS or S3 on the node address (a connect timeout killed a trainer).
        run("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        run("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        run("iptables", "-N", GUARD)
        outside = external_interface()
        if outside:
            run("iptables", "-A", GUARD, "-s", TEST_RANGE, "-o", outside, "-j", "REJECT")
        run("iptables", "-A", GUARD, "-s", TEST_RANGE, "!", "-o", BRIDGE, "-j", "REJECT")
        run("iptables", "-I", "FORWARD", "1", "-j", GUARD)
        netd = self.workdir / "cni" / "net.d"
        netd.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "kubecpt",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "198.18.128.10", "gateway": NODE_ADDRESS}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                }
            ],
        }
        (netd / "10-kubecpt.conflist").write_text(json.dumps(conflist, indent=2))

    def _containerd(self) -> None:
        root = self.workdir / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
[grpc]
  address = "{self.socket}"
[{cri}]
  sandbox_image = "kubecpt.local/pause:dev"
  # Nothing may lower oom_score_adj in this VM: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
"""
        (root / "config.toml").write_text(config)
        containerd = self._launch("containerd", ["containerd", "--config", str(root / "config.toml")])
        wait_for("containerd socket", self.socket.exists, 60, containerd.check_alive)
        for image in self.images:
            # Unpacked for the CRI's snapshotter on import: the kubelet never pulls (imagePullPolicy Never).
            run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "import", str(image))

    def _coredns(self) -> None:
        health, ready = free_port(), free_port()
        corefile = f"""cluster.local:53 in-addr.arpa:53 {{
    bind {NODE_ADDRESS}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {self.cluster.kubeconfig} kubecpt-test
        pods insecure
    }}
}}
"""
        path = self.workdir / "Corefile"
        path.write_text(corefile)
        coredns = self._launch("coredns", [self.binary("coredns"), "-conf", str(path)])

        def is_ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{ready}/ready", timeout=2) as response:
                return response.status == 200

        wait_for("CoreDNS /ready", is_ready, 60, coredns.check_alive)

    def _kubelet(self) -> None:
        assert self.cluster.pki is not None
        healthz = free_port()
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("")  # pods get only the cluster DNS, never the host's resolvers
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "address": NODE_ADDRESS,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_ADDRESS],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "serializeImagePulls": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "registerNode": True,
            "localStorageCapacityIsolation": False,
            "shutdownGracePeriod": "0s",
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        kubelet = self._launch(
            "kubelet",
            [
                self.binary("kubelet"),
                f"--config={path}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--node-ip={NODE_ADDRESS}",
                f"--hostname-override={NODE_NAME}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                "--v=1",
            ],
        )

        def node_ready() -> bool:
            node = self.cluster.get_json("node", NODE_NAME)
            return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

        self.kubelet_healthz = healthz
        wait_for(f"node {NODE_NAME} Ready", node_ready, 180, kubelet.check_alive)

    # -- faults (the chaos run) ---------------------------------------------------------------------
    def restart_kubelet(self) -> None:
        """Stop the kubelet (SIGTERM; the containers keep running under containerd) and start it again with the
        same flags; returns once its /healthz answers."""
        kubelet = next(c for c in self.components if c.name == "kubelet")
        kubelet.stop()
        kubelet.start()

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.kubelet_healthz}/healthz", timeout=2) as response:
                return response.status == 200

        wait_for("kubelet /healthz after its restart", healthy, 120, kubelet.check_alive)

    def kill_container(self, container_id: str) -> bool:
        """SIGKILL a container's main process through containerd (`ctr tasks kill`), as the OOM killer would;
        False if it had already exited."""
        ctr = ["ctr", "--address", str(self.socket), "-n", "k8s.io"]
        return run(*ctr, "tasks", "kill", "-s", "SIGKILL", container_id, check=False).returncode == 0

    def _kube_proxy(self) -> None:
        healthz, metrics = free_port(), free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cluster.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            "nodePortAddresses": [f"{NODE_ADDRESS}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"masqueradeAll": False, "localhostNodePorts": False},
        }
        self.proxy_config = self.workdir / "kube-proxy-config.yaml"
        self.proxy_config.write_text(yaml.safe_dump(config))
        proxy = self._launch("kube-proxy", [self.binary("kube-proxy"), f"--config={self.proxy_config}"])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{healthz}/healthz", timeout=2) as response:
                return response.status == 200

        wait_for("kube-proxy /healthz", healthy, 60, proxy.check_alive)

    # -- stop ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process by PID and remove what they left on the host; never raises."""
        if any(c.name == "kubelet" and c.process and c.process.poll() is None for c in self.components):
            self._drain()
        for component in reversed(self.components):
            component.stop()
        self.cluster.stop()
        for line in _pids_of_ours(self._roots()):  # shims and container processes outlive containerd
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":", 1)[0]), 9)
        time.sleep(0.5)
        for point in sorted(_our_mounts(self._roots()), key=len, reverse=True):
            run("umount", "-l", point, check=False)
        for directory in _cgroup_dirs():
            subs = sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for sub in [*subs, directory]:
                _rmdir(sub)
        remove_kube_chains()
        if self.started_network and Path("/sys/class/net", BRIDGE).exists():
            run("ip", "link", "delete", BRIDGE, check=False)
        for name, value in self.sysctls.items():
            if value is not None and _read_sysctl(name) != value:
                Path("/proc/sys", name).write_text(value)
        for path in self.absent_paths:
            shutil.rmtree(path, ignore_errors=True)

    def _drain(self) -> None:
        """Delete the workloads and then the pods through the API, so the kubelet stops each sandbox the
        normal way (CNI DEL, runc deleting its cgroups and mounts)."""
        kubectl = self.cluster.kubectl
        kubectl("delete", "jobsets.jobset.x-k8s.io,jobs", "--all", "-A", "--wait=false", check=False)
        kubectl("delete", "pods", "--all", "-A", "--grace-period=1", "--wait=false", check=False)
        ctr = ["ctr", "--address", str(self.socket), "-n", "k8s.io"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not run(*ctr, "tasks", "ls", "-q", check=False).stdout.split():
                return
            time.sleep(1)

    def _roots(self) -> list[Path]:
        return [self.workdir, Path("/run/containerd"), Path("/var/lib/kubelet"), Path("/run/netns/cni-")]

    def leftovers(self) -> list[str]:
        """Anything of the node's still on this host: processes, mounts, iptables chains, cgroups, paths."""
        found = [f"process {line}" for line in _pids_of_ours(self._roots()) if int(line.split(":")[0]) != os.getpid()]
        found += [f"mount {point}" for point in _our_mounts(self._roots())]
        found += [
            f"{tool} chain {t}/{c}"
            for tool in ("iptables-save", "ip6tables-save")
            for t, cs in _kube_chains(tool).items()
            for c in cs
        ]
        found += [f"cgroup {d}" for d in _cgroup_dirs()]
        found += [f"interface {BRIDGE}"] if Path("/sys/class/net", BRIDGE).exists() else []
        found += [f"path {p}" for p in self.absent_paths if p.exists()]
        found += [f"sysctl {n}={_read_sysctl(n)} (was {v})" for n, v in self.sysctls.items() if _read_sysctl(n) != v]
        return found


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
