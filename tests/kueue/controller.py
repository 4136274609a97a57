"""The real Kueue controller (built by tests/kueue/build.sh) against the test control plane.

Kueue reads its metrics serving certificate from the fixed path /etc/kueue/metrics/certs when it does not manage
certificates itself. The controller therefore runs in a private mount namespace (`unshare --mount`) where an
overlay over /etc adds that folder; the host's /etc is never written. Its webhooks are served on loopback but
not registered (as with JobSet): the operator creates queue-labelled children suspended itself, and the tests
check admission, not defaulting.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import yaml

from tests.cluster.cluster import Cluster, ClusterError, Component, free_port, wait_for
from tests.cluster.pki import self_signed

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kueue-system"
# Mount an overlay on /etc whose upper layer holds kueue/metrics/certs, then run Kueue; $1 upper, $2 work dir.
IN_PRIVATE_ETC = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"'


def build_kueue() -> Path:
    result = subprocess.run(["bash", str(REPO / "tests" / "kueue" / "build.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"tests/kueue/build.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def start_kueue(cluster: Cluster, workdir: Path) -> Component:
    """Apply Kueue's CRDs, start the controller, wait until it is healthy; the caller stops the component."""
    bin_dir = build_kueue()
    for crd in sorted((bin_dir / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    for crd in sorted((bin_dir / "crds").glob("*.yaml")):
        cluster.wait_established(yaml.safe_load(crd.read_text())["metadata"]["name"])
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    webhook_certs = workdir / "webhook-certs"
    self_signed(webhook_certs, "127.0.0.1")
    upper, work = workdir / "etc-upper", workdir / "etc-work"
    shutil.copytree(webhook_certs, upper / "kueue" / "metrics" / "certs")
    work.mkdir(parents=True, exist_ok=True)
    probe = free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "internalCertManagement": {"enable": False},
        "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(webhook_certs)},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe}"},
        "leaderElection": {"leaderElect": False},
        "integrations": {"frameworks": ["batch/job", "jobset.x-k8s.io/jobset"]},
        "featureGates": {"VisibilityOnDemand": False},
    }
    path = workdir / "kueue-config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [
        *("unshare", "--mount", "--propagation", "private", "sh", "-c", IN_PRIVATE_ETC, "sh", str(upper), str(work)),
        *(str(bin_dir / "kueue"), f"--config={path}", f"--kubeconfig={cluster.kubeconfig}"),
    ]
    kueue = Component("kueue", argv, workdir / "kueue.log")
    kueue.start()

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{probe}/readyz", timeout=2) as response:
            return response.status == 200

    wait_for("kueue /readyz", healthy, 120, kueue.check_alive)
    return kueue
