"""The S3 fault proxy (tests/s3proxy.py) itself: each fault fires exactly as often as asked, on the requests
it matches, and everything else passes through to moto unchanged."""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.s3proxy import S3FaultProxy


@pytest.fixture
def proxy(s3_server: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_server) as running:
        yield running


def client(endpoint: str, attempts: int = 1, read_timeout: float = 60):
    """A boto3 client without retries (attempts=1), so each fault reaches the caller."""
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts}, read_timeout=read_timeout)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=config,
    )


@pytest.fixture
def bucket(proxy: S3FaultProxy) -> str:
    """A new bucket per test (the moto server lives for the whole session)."""
    name = f"proxied-{uuid.uuid4().hex[:8]}"
    client(proxy.endpoint).create_bucket(Bucket=name)
    return name


def test_requests_pass_through_unchanged(proxy: S3FaultProxy, bucket: str) -> None:
    s3 = client(proxy.endpoint)
    s3.put_object(Bucket=bucket, Key="a/b c.bin", Body=bytes(range(256)) * 1000)
    assert s3.get_object(Bucket=bucket, Key="a/b c.bin")["Body"].read() == bytes(range(256)) * 1000
    assert s3.head_object(Bucket=bucket, Key="a/b c.bin")["ContentLength"] == 256_000
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b c.bin"]
    assert proxy.fired() == []


def test_slow_down_answers_the_matching_requests_only(proxy: S3FaultProxy, bucket: str) -> None:
    s3 = client(proxy.endpoint)
    proxy.slow_down(2, method="PUT", key=r"/manifest\.json$")
    s3.put_object(Bucket=bucket, Key="other.json", Body=b"{}")  # not matched
    for _ in range(2):
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket=bucket, Key="run/manifest.json", Body=b"{}")
        assert refused.value.response["Error"]["Code"] == "SlowDown"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    s3.put_object(Bucket=bucket, Key="run/manifest.json", Body=b"{}")  # the count is spent
    assert [(f.kind, f.method, f.path) for f in proxy.fired()] == [
        ("slowdown", "PUT", f"/{bucket}/run/manifest.json")
    ] * 2


def test_a_reset_reaches_the_client_and_a_retry_gets_through(proxy: S3FaultProxy, bucket: str) -> None:
    proxy.reset(1, method="GET")
    client(proxy.endpoint).put_object(Bucket=bucket, Key="k", Body=b"v")
    with pytest.raises(ConnectionClosedError):
        client(proxy.endpoint).get_object(Bucket=bucket, Key="k")
    proxy.reset(1, method="GET")
    assert client(proxy.endpoint, attempts=3).get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert len(proxy.fired("reset")) == 2


def test_a_stall_outlasts_the_read_timeout_and_is_never_forwarded(proxy: S3FaultProxy, bucket: str) -> None:
    proxy.stall(1, seconds=600, method="PUT")  # far past the client's timeout: the client must give up
    with pytest.raises(ReadTimeoutError):
        client(proxy.endpoint, read_timeout=0.5).put_object(Bucket=bucket, Key="stalled", Body=b"v")
    s3 = client(proxy.endpoint)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)  # the stalled PUT never reached moto
    proxy.stall(1, seconds=600, method="PUT")
    client(proxy.endpoint, attempts=2, read_timeout=0.5).put_object(Bucket=bucket, Key="stalled", Body=b"v")
    assert s3.get_object(Bucket=bucket, Key="stalled")["Body"].read() == b"v"


def test_the_seeded_chaos_schedule_replays(s3_server: str) -> None:
    logs = []
    for _ in range(2):
        with S3FaultProxy(s3_server) as proxy:
            proxy.chaos(seed=7, probability=0.5, kinds=("reset", "slowdown"))
            s3 = client(proxy.endpoint)
            for number in range(20):
                with contextlib.suppress(ClientError, ConnectionClosedError):
                    s3.head_bucket(Bucket=f"chaos-{number}")
            logs.append([(f.number, f.kind) for f in proxy.fired()])
    assert logs[0] == logs[1] and 0 < len(logs[0]) < 20


def test_faults_can_be_added_over_http(proxy: S3FaultProxy, bucket: str) -> None:
    fault = json.dumps({"kind": "slowdown", "count": 1, "method": "GET"}).encode()
    with urllib.request.urlopen(urllib.request.Request(proxy.endpoint + "/_faults/", data=fault)) as answer:
        assert json.load(answer)["pending"] == 1
    with pytest.raises(ClientError):
        client(proxy.endpoint).list_objects_v2(Bucket=bucket)
    with urllib.request.urlopen(proxy.endpoint + "/_faults/") as answer:
        state = json.load(answer)
    assert state["pending"] == 0 and [f["kind"] for f in state["log"]] == ["slowdown"]
