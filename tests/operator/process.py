"""The operator as a process of its own (`python -P -m cpt_operator`), as the tests run it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.cluster.cluster import Cluster, free_port

REPO = Path(__file__).resolve().parents[2]


class Operator:
    """`python -P -m cpt_operator --namespace NS` as a process, with its log kept."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.extra_env = {"KUBECPT_WORKER_IMAGE": "kubecpt/worker:test", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.metrics_port = free_port()

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "cpt_operator", "--namespace", self.namespace, "--liveness", self.liveness],
            cwd=REPO,
            env={
                **self.cluster.env(),
                **self.extra_env,
                "KUBECPT_METRICS_PORT": str(self.metrics_port),
                "KUBECPT_METRICS_ADDRESS": "127.0.0.1",
            },
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

    def scrape(self, path: str = "/metrics") -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}{path}" if path == "/metrics" else path
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def alive(self) -> bool:
        """True while it runs; a crashed operator fails the test at once, with its log."""
        assert self.process is not None and self.process.poll() is None, self.log.read_text()[-5000:]
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
