"""Local directories for model and tokenizer URIs: local paths as they are, object stores downloaded once
into a cache, hub ids through huggingface_hub (which honours HF_HUB_OFFLINE)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from pathlib import Path

import fsspec

from cpt_pipeline.storage import naming_the_object, storage_options


def cache_root() -> Path:
    return Path(os.environ.get("CPT_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "kubecpt-cache")))


def is_hub_id(uri: str) -> bool:
    """org/name with no scheme and nothing at that local path (from_pretrained resolves and caches it)."""
    return "://" not in uri and not uri.startswith(("/", ".")) and not Path(uri).exists()


def local_dir(uri: str, patterns: tuple[str, ...] = ("*",), revision: str | None = None) -> Path:
    """A local directory with the files of uri that match patterns (a hub id at `revision`, if given)."""
    local = Path(uri.removeprefix("file://"))
    if local.is_dir():
        return local
    if uri.startswith(("s3://", "gs://")):
        target = cache_root() / "dirs" / hashlib.sha256(f"{uri}|{patterns}".encode()).hexdigest()[:16]
        if (target / ".complete").exists():
            return target
        fs, root = fsspec.core.url_to_fs(uri, **storage_options(uri))
        staging = target.with_name(target.name + f".tmp-{os.getpid()}")
        with naming_the_object("listing", uri):
            found = fs.find(root)
        for path in found:
            relative = path[len(root.rstrip("/")) + 1 :]
            if any(fnmatch.fnmatch(relative, p) for p in patterns):
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                with naming_the_object("downloading", f"{uri.rstrip('/')}/{relative}"):
                    fs.get_file(path, str(staging / relative))
        if not staging.exists():
            raise FileNotFoundError(f"{uri}: no files matching {patterns}")
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target
    if "/" in uri and is_hub_id(uri):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(uri, allow_patterns=list(patterns), revision=revision))
    raise FileNotFoundError(f"{uri}: no such directory (local path, s3://, gs:// or a Hugging Face hub id)")
