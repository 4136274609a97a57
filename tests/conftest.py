"""Shared fixtures: the repository root and the shared test data beside the checkout."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def crd_installed(cluster):
    """The cluster with the generated ContinuedPretrain CRD applied and Established."""
    from tests.cluster.helpers import condition, eventually

    crd = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
    cluster.kubectl("apply", "--server-side", "-f", str(crd))
    eventually(
        lambda: condition(cluster.get_json("crd", "continuedpretrains.cpt.kubecpt.dev"), "Established") == "True",
        what="CRD Established",
    )
    return cluster


@pytest.fixture
def namespace(cluster, request: pytest.FixtureRequest):
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextlib.contextmanager
def start_moto(host: str, logdir: Path) -> Iterator[str]:
    """A real S3-compatible server (moto in server mode) on `host`; yields its endpoint URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("moto_server is not installed (pip install -e .[dev])")
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    log = (logdir / "moto.log").open("wb")
    process = subprocess.Popen([exe, "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto server did not start on {endpoint} (see {log.name})")
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (moto in server mode) on 127.0.0.1; yields its endpoint URL."""
    with start_moto("127.0.0.1", tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    """Credentials and endpoint for the moto server in this process and its children; yields an s3fs filesystem."""
    import s3fs

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_server,
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_proxy(s3, s3_server: str, monkeypatch: pytest.MonkeyPatch):
    """The s3 fixture's environment, with every S3 request of this process and its children going through the
    fault proxy (tests/s3proxy.py) and short timeouts and few attempts per request, so that a stall is given up
    after 1 s and a fault that persists fails fast; yields the proxy."""
    import s3fs

    from cpt_pipeline.storage import S3_ATTEMPTS_ENV, S3_TIMEOUT_ENV
    from tests.s3proxy import S3FaultProxy

    with S3FaultProxy(s3_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        monkeypatch.setenv(S3_TIMEOUT_ENV, "1")
        monkeypatch.setenv(S3_ATTEMPTS_ENV, "3")
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy
        s3fs.S3FileSystem.clear_instance_cache()
