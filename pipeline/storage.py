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

# Seconds an S3 request may wait to connect, and then for each read of the answer, before it is retried
# (botocore's retries, then s3fs's): a stalled connection is given up and retried, never waited on forever.
S3_TIMEOUT_ENV = "CPT_S3_TIMEOUT_SECONDS"
S3_TIMEOUT_SECONDS = 60.0
# botocore's attempts per request ("standard" mode: 503 SlowDown, resets and timeouts are retried, with
# backoff); s3fs retries each failed call again, up to 5 times.
S3_ATTEMPTS_ENV = "CPT_S3_ATTEMPTS"
S3_ATTEMPTS = 5


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
    timeout = float(os.environ.get(S3_TIMEOUT_ENV) or S3_TIMEOUT_SECONDS)
    config = {
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "retries": {"mode": "standard", "total_max_attempts": int(os.environ.get(S3_ATTEMPTS_ENV) or S3_ATTEMPTS)},
    }
    return {"client_kwargs": client_kwargs, "config_kwargs": config} if client_kwargs else {"config_kwargs": config}


_RETRIED_STATUS = {500, 502, 503, 504}


def _unavailable_answer(error: Exception) -> bool:
    """A 5xx answer: s3fs retries SlowDown only when the body says so, and a HEAD's 503 has no body."""
    response = getattr(error, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") in _RETRIED_STATUS


def _retry_unavailable_answers() -> None:
    """Make s3fs retry every 5xx answer (on top of botocore's attempts), a HEAD's included."""
    import s3fs.core

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

    def exists(self, *parts: str) -> bool:
        with self._naming("checking", *parts):
            return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self._naming("reading", *parts):
            return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        else:
            with self._naming("writing", *parts):
                self.fs.pipe_file(target, data)

    def put_file(self, local_path: str, *parts: str) -> None:
        """Copy a local file into storage atomically, streaming (never the whole file in memory)."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(local_path, temp)
            os.replace(temp, target)
        else:
            with self._naming("uploading", *parts):
                self.fs.put_file(local_path, target)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), *parts)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a directory; empty when it does not exist."""
        base = self.path(*parts)
        try:
            with self._naming("listing", *parts):
                entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        with self._naming("removing", *parts):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def local_copy(self, *parts: str, cache_dir: str) -> str:
        """A local path for the file (itself when local; else downloaded into cache_dir once, under its full
        bucket path, so files of the same name in different directories stay apart)."""
        if self.is_local:
            return self.path(*parts)
        target = os.path.join(cache_dir, self.path(*parts).lstrip("/"))
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with self._naming("downloading", *parts):
                self.fs.get_file(self.path(*parts), temp)
            os.replace(temp, target)
        return target
