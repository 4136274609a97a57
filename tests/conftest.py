"""Shared fixtures: the repository root and the shared test data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (or $CPT_SHARED_DATA); a clear failure when it is missing."""
    path = Path(os.environ.get("CPT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "README.md").is_file():
        pytest.fail(f"shared test data not found at {path} (set CPT_SHARED_DATA or check out ../shared)")
    return path


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """The real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok), built on first
    use by tests/cluster/build.sh. If it cannot be built or started, the tests that use it fail."""
    from tests.cluster.cluster import Cluster, build_binaries

    workdir = tmp_path_factory.mktemp("cluster")
    with Cluster(workdir=workdir, bin_dir=build_binaries()) as running:
        yield running
    print(f"\ncluster logs kept in {workdir}")


@pytest.fixture
def namespace(cluster, request: pytest.FixtureRequest):
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
