"""Object-store faults through the fault proxy (tests/s3proxy.py) in front of moto, one kind at a time and
counted: a 503 SlowDown, a connection reset or a stalled connection is retried and the operation succeeds;
a fault that persists ends it with StorageUnavailable naming the object, and nothing partial is visible."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cpt_pipeline.storage import S3_ATTEMPTS_ENV, Storage, StorageUnavailable
from tests.s3proxy import S3FaultProxy

# One occurrence of each fault, as the proxy arms it: kind -> (count, extra arguments).
TRANSIENT = {"reset": 1, "slowdown": 2, "stall": 1}


def arm(proxy: S3FaultProxy, kind: str, count: int, method: str, key: str) -> None:
    if kind == "stall":
        proxy.stall(count, seconds=120, method=method, key=key)  # far past the 1 s timeout the fixture sets
    elif kind == "reset":
        proxy.reset(count, method=method, key=key)
    else:
        proxy.slow_down(count, method=method, key=key)


@pytest.fixture
def storage(s3_proxy: S3FaultProxy, s3) -> Storage:
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    return Storage.open_uri(f"s3://{bucket}/run")


def _write(storage: Storage, tmp: Path) -> Any:
    storage.write_json({"shards": 3}, "data", "manifest.json")
    return storage.read_json("data", "manifest.json")


def _upload(storage: Storage, tmp: Path) -> Any:
    (tmp / "part.bin").write_bytes(b"x" * 100_000)
    storage.put_file(str(tmp / "part.bin"), "checkpoints", "step-1", "part.bin")
    return len(storage.read_bytes("checkpoints", "step-1", "part.bin"))


def _read(storage: Storage, tmp: Path) -> Any:
    return storage.read_bytes("checkpoints", "latest")


def _exists(storage: Storage, tmp: Path) -> Any:
    return storage.exists("checkpoints", "latest")


def _list(storage: Storage, tmp: Path) -> Any:
    storage.fs.invalidate_cache()
    return storage.list("checkpoints")


def _download(storage: Storage, tmp: Path) -> Any:
    return Path(storage.local_copy("checkpoints", "latest", cache_dir=str(tmp / "cache"))).read_bytes()


# operation, HTTP method it is faulted on, key pattern, its result without faults, what a failure names
OPERATIONS: list[tuple[Callable[[Storage, Path], Any], str, str, Any, str]] = [
    (_write, "PUT", r"manifest\.json$", {"shards": 3}, "data/manifest.json"),
    (_upload, "PUT", r"part\.bin$", 100_000, "checkpoints/step-1/part.bin"),
    (_read, "GET", r"/latest$", b"step-1\n", "checkpoints/latest"),
    (_exists, "HEAD", r"/latest$", True, "checkpoints/latest"),
    (_list, "GET", r"/faults-[0-9a-f]+/?$", ["latest"], "checkpoints"),
    (_download, "GET", r"/latest$", b"step-1\n", "checkpoints/latest"),
]
BY_NAME = {op[0].__name__.strip("_"): op for op in OPERATIONS}
ALL_KINDS = ("reset", "slowdown", "stall")
# every kind on the writes and the read that publish and resume; one kind each on the other operations
PASSING = [(name, kind) for name in ("write", "upload", "read") for kind in ALL_KINDS] + [
    ("exists", "slowdown"),
    ("list", "stall"),
    ("download", "reset"),
]
LASTING = [("write", "slowdown"), ("upload", "reset"), ("read", "slowdown"), ("exists", "slowdown"), ("list", "reset")]
LASTING += [("download", "slowdown")]


def _armed(storage: Storage, s3_proxy: S3FaultProxy, name: str, kind: str, times: int) -> tuple[Any, Any, str]:
    """The operation (its object written first unless it writes it), armed to meet `kind` `times` times; with
    the result it returns when it succeeds and the object's name."""
    operation, method, key, expected, names = BY_NAME[name]
    if method != "PUT":
        storage.write_text("step-1\n", "checkpoints", "latest")
    arm(s3_proxy, kind, times, method, key)
    return operation, expected, names


@pytest.mark.parametrize(("name", "kind"), PASSING, ids=[f"{n}-{k}" for n, k in PASSING])
def test_a_passing_fault_is_retried(
    storage: Storage, s3_proxy: S3FaultProxy, tmp_path: Path, name: str, kind: str
) -> None:
    operation, expected, _ = _armed(storage, s3_proxy, name, kind, TRANSIENT[kind])
    assert operation(storage, tmp_path) == expected
    assert s3_proxy.pending() == 0 and len(s3_proxy.fired(kind)) == TRANSIENT[kind]


@pytest.mark.parametrize(("name", "kind"), LASTING, ids=[f"{n}-{k}" for n, k in LASTING])
def test_a_lasting_fault_fails_naming_the_object(
    storage: Storage, s3_proxy: S3FaultProxy, tmp_path: Path, name: str, kind: str
) -> None:
    operation, _, names = _armed(storage, s3_proxy, name, kind, 1000)
    with pytest.raises(StorageUnavailable) as failure:
        operation(storage, tmp_path)
    message = str(failure.value)
    # One retry layer (s3fs's): CPT_S3_ATTEMPTS attempts, none nested; a reset pooled connection is sent again
    # once by the HTTP client (aiohttp) within an attempt.
    per_attempt = 2 if kind == "reset" else 1
    assert len(s3_proxy.fired(kind)) == int(os.environ[S3_ATTEMPTS_ENV]) * per_attempt
    assert storage.url(*names.split("/")) + " failed after retries" in message and "\n" not in message
    s3_proxy.clear()
    if name == "write":
        assert not storage.exists("data", "manifest.json")
    if name == "upload":
        assert not storage.exists("checkpoints", "step-1", "part.bin")
    if name == "download":
        assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
