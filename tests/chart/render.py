"""Render the chart with the real helm binary of the test control plane."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.cluster import build_binaries, versions

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubecpt"
# The Kubernetes the chart is rendered for: the test cluster's (helm built from source assumes v1.20, which the
# chart's kubeVersion refuses).
KUBE_VERSION = versions()["K8S_VERSION"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(build_binaries() / "helm"), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed: {result.stderr}")
    return result


def template(*values: str, chart: Path = CHART) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` -> {(kind, name): object}."""
    text = helm("template", "rel", str(chart), "--namespace", "ops", "--kube-version", KUBE_VERSION, *values).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(text) if o}
