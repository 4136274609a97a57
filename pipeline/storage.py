"""Object storage through fsspec: local paths, file://, s3:// (with endpoint override), gs://.

Writes are atomic: on a local filesystem a file is written under a temporary name and renamed into
place; on object stores a single PUT or multipart upload becomes visible only when complete. Readers
only trust files that a manifest or a completion marker names, so a killed writer leaves nothing that
looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cpt.api.platform import StorageSpec

# One retry layer: s3fs's (botocore makes a single attempt per call). Each request waits at most
# CPT_S3_TIMEOUT_SECONDS to connect and then for each read of the answer, and is made CPT_S3_ATTEMPTS times
# with s3fs's backoff: a 5xx (503 SlowDown), a reset or a stalled connection is retried, never waited on
# forever. A whole storage operation (a multipart upload of a checkpoint file included) is cut off after
# CPT_S3_DEADLINE_SECONDS; the training process group's timeout exceeds it (cpt_pipeline.train.distributed), so
# a store that keeps failing ends training with exit 5 and one line, not in a collective's watchdog.
S3_TIMEOUT_ENV = "CPT_S3_TIMEOUT_SECONDS"
S3_TIMEOUT_SECONDS = 30.0
S3_ATTEMPTS_ENV = "CPT_S3_ATTEMPTS"
S3_ATTEMPTS = 5
S3_DEADLINE_ENV = "CPT_S3_DEADLINE_SECONDS"
S3_DEADLINE_SECONDS = 1200.0


def s3_timeout() -> float:
    return float(os.environ.get(S3_TIMEOUT_ENV) or S3_TIMEOUT_SECONDS)


def s3_attempts() -> int:
    return int(os.environ.get(S3_ATTEMPTS_ENV) or S3_ATTEMPTS)


def s3_deadline() -> float:
    """Seconds one storage operation may take in all, retries included."""
    return float(os.environ.get(S3_DEADLINE_ENV) or S3_DEADLINE_SECONDS)


def request_worst_case_seconds() -> float:
    """The longest one request can take under a lasting fault: every attempt stalls to the connect and the
    read timeout, plus s3fs's backoff between attempts (min(0.1 * 1.7**i, 15) s after attempt i)."""
    backoff = sum(min(0.1 * 1.7**i, 15.0) for i in range(s3_attempts()))
    return s3_attempts() * 2 * s3_timeout() + backoff


def storage_options(uri: str, endpoint: str | None = None, region: str | None = None) -> dict[str, Any]:
    """fsspec options for a URI: the S3 endpoint/region override, timeouts and retries; credentials come from
    the environment."""
    if not uri.startswith("s3://"):
        return {}
    _retry_unavailable_answers()
    client_kwargs: dict[str, Any] = {}
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    timeout = s3_timeout()
    config = {
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "retries": {"mode": "standard", "total_max_attempts": 1},  # s3fs retries, botocore does not
    }
    return {"client_kwargs": client_kwargs, "config_kwargs": config} if client_kwargs else {"config_kwargs": config}


_RETRIED_STATUS = {500, 502, 503, 504}
# botocore's connection failures that s3fs does not retry by itself (botocore did, before it made one attempt)
_RETRIED_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "ClientConnectionError"}


def _unavailable_answer(error: Exception) -> bool:
    """A 5xx answer (s3fs retries SlowDown only when the body says so, and a HEAD's 503 has no body) or a
    connection that could not be made."""
    if {cls.__name__ for cls in type(error).__mro__} & _RETRIED_ERRORS:
        return True
    response = getattr(error, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") in _RETRIED_STATUS


def _retry_unavailable_answers() -> None:
    """Make s3fs retry every 5xx answer, a HEAD's included, and every failed connection, CPT_S3_ATTEMPTS times
    in all (s3fs's attempts per call are a class setting, not an option)."""
    import s3fs.core

    s3fs.core.S3FileSystem.retries = s3_attempts()
    if s3fs.core.CUSTOM_ERROR_HANDLER is not _unavailable_answer:
        s3fs.core.set_custom_error_handler(_unavailable_answer)


class StorageUnavailable(ConnectionError):
    """An object store that still fails after every retry; the message names the object (exit code 5)."""


# Errors of the object store's client (botocore, aiohttp), matched by name to keep them optional here.
_CLIENT_ERRORS = {"BotoCoreError", "ClientError", "ClientPayloadError", "ServerTimeoutError", "ClientConnectionError"}
_NOT_UNAVAILABLE = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@contextlib.contextmanager
def naming_the_object(action: str, url: str) -> Iterator[None]:
    """Turn an object-store failure that outlived the retries into StorageUnavailable naming `url`."""
    try:
        yield
    except (StorageUnavailable, *_NOT_UNAVAILABLE):
        raise
    except Exception as error:
        names = {cls.__name__ for cls in type(error).__mro__}
        if not isinstance(error, OSError | TimeoutError) and not names & _CLIENT_ERRORS:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        raise StorageUnavailable(f"{action} {url} failed after retries: {message}") from error


def export_object_store_settings(spec: StorageSpec) -> None:
    """Make spec.storage's S3 endpoint and region apply to every s3:// URI this process and its children
    open (sources, model, tokenizer, task data, perplexity sets), not only to the output storage. They go
    into the environment variables that boto reads; the spec wins over values already set there.
    Credentials come from the environment too (the credentials Secret's keys, as env vars)."""
    if not spec.uri.startswith("s3://"):
        return
    if spec.endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = spec.endpoint
    if spec.region:
        os.environ["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"] = spec.region


@dataclass
class Storage:
    """A root URI and its filesystem. Paths given to the methods are relative to the root."""

    root: str
    fs: fsspec.AbstractFileSystem

    @classmethod
    def open_uri(cls, uri: str, endpoint: str | None = None, region: str | None = None) -> Storage:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, endpoint, region))
        if isinstance(fs, LocalFileSystem):
            path = os.path.abspath(path)
        return cls(root=path.rstrip("/"), fs=fs)

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> Storage:
        return cls.open_uri(spec.uri, spec.endpoint, spec.region)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """A URL another process can open (keeps the protocol for object stores)."""
        path = self.path(*parts)
        if self.is_local:
            return path
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple | list) else self.fs.protocol
        return f"{protocol}://{path}"

    def sub(self, *parts: str) -> Storage:
        return Storage(self.path(*parts), self.fs)

    def _naming(self, action: str, *parts: str) -> contextlib.AbstractContextManager[None]:
        """Object-store failures that outlived the retries, as StorageUnavailable naming the object."""
        return contextlib.nullcontext() if self.is_local else naming_the_object(action, self.url(*parts))

    @property
    def _deadline(self) -> dict[str, float]:
        """The keyword that cuts an object-store operation off after CPT_S3_DEADLINE_SECONDS (fsspec's)."""
        return {} if self.is_local else {"timeout": s3_deadline()}

    def exists(self, *parts: str) -> bool:
        with self._naming("checking", *parts):
            return self.fs.exists(self.path(*parts), **self._deadline)

    def read_bytes(self, *parts: str) -> bytes:
        with self._naming("reading", *parts):
            return self.fs.cat_file(self.path(*parts), **self._deadline)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically."""
        target = self.path(*parts)
        if self.is_local:
            with _staged(target) as temp, open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            with self._naming("writing", *parts):
                self.fs.pipe_file(target, data, **self._deadline)

    def put_file(self, local_path: str, *parts: str) -> None:
        """Copy a local file into storage atomically, streaming (never the whole file in memory)."""
        target = self.path(*parts)
        if self.is_local:
            with _staged(target) as temp:
                shutil.copyfile(local_path, temp)
        else:
            with self._naming("uploading", *parts):
                self.fs.put_file(local_path, target, **self._deadline)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), *parts)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a directory; empty when it does not exist."""
        base = self.path(*parts)
        try:
            with self._naming("listing", *parts):
                entries = self.fs.ls(base, detail=False, **self._deadline)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        with self._naming("removing", *parts):
            if self.fs.exists(path, **self._deadline):
                self.fs.rm(path, recursive=True, **self._deadline)

    def local_copy(self, *parts: str, cache_dir: str) -> str:
        """A local path for the file (itself when local; else downloaded into cache_dir once, under its full
        bucket path, so files of the same name in different directories stay apart)."""
        if self.is_local:
            return self.path(*parts)
        target = os.path.join(cache_dir, self.path(*parts).lstrip("/"))
        if not os.path.exists(target):
            with _staged(target) as temp, self._naming("downloading", *parts):
                self.fs.get_file(self.path(*parts), temp, **self._deadline)
        return target


@contextlib.contextmanager
def _staged(target: str) -> Iterator[str]:
    """A temporary path beside `target`, renamed onto it when the block ends, and removed when the block raises
    (an error, or Ctrl-C's KeyboardInterrupt). A process killed by a signal it does not handle (a pod's SIGTERM
    or SIGKILL) can still leave one; readers never take `*.tmp-*` files for data."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield temp
        os.replace(temp, target)
    except BaseException as error:
        try:
            os.remove(temp)
        except FileNotFoundError:
            pass
        except OSError as cleanup:  # must not hide the write's own error, which names what went wrong
            error.add_note(f"temporary file {temp} was left behind: {cleanup}")
        raise
