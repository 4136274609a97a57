"""Storage: local caches of object-store files keep files of the same name apart."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from cpt_pipeline.storage import Storage


def test_local_copies_of_same_named_files_do_not_collide(tmp_path: Path, s3, s3_server: str) -> None:
    bucket = f"cpt-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    root = Storage.open_uri(f"s3://{bucket}/run", endpoint=s3_server)
    root.write_bytes(b"domain rows", "data", "domain", "stem", "shard-00000.bin")
    root.write_bytes(b"replay rows", "data", "replay", "stories", "shard-00000.bin")
    cache = str(tmp_path / "cache")
    domain = root.sub("data", "domain", "stem").local_copy("shard-00000.bin", cache_dir=cache)
    replay = root.sub("data", "replay", "stories").local_copy("shard-00000.bin", cache_dir=cache)
    assert domain != replay
    assert Path(domain).read_bytes() == b"domain rows" and Path(replay).read_bytes() == b"replay rows"


def test_put_file_streams_a_local_file_in_atomically(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 100_000)
    storage = Storage.open_uri(str(tmp_path / "out"))
    storage.put_file(str(source), "a", "b.bin")
    assert (tmp_path / "out" / "a" / "b.bin").read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.bin"]  # no temporary left behind


def test_a_stage_log_in_an_object_store_is_uploaded_and_a_rerun_appends(s3, s3_server: str) -> None:
    from cpt.stages import Stage
    from cpt_pipeline.local import StageLog

    bucket = f"cpt-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    root = Storage.open_uri(f"s3://{bucket}/run", endpoint=s3_server)
    for attempt in ("first", "second"):
        log = StageLog(root, Stage.TRAIN)
        log.write(f"{attempt} attempt")
        log.close()
        assert not log.path.exists()  # the local copy is gone once uploaded
    text = root.read_bytes("logs", "train.log").decode()
    assert text.count("==== cpt run: train, started") == 2
    assert text.index("first attempt") < text.index("second attempt")
    assert log.location == f"s3://{bucket}/run/logs/train.log"


def test_an_interrupted_local_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt) or an error in the middle of an atomic write removes its temporary file and
    keeps the old content (a fresh `make test` saw `data/heldout/domain.jsonl.tmp-a6f1abdc` left by a Ctrl-C at
    the dedup stage's shutdown, tests/test_interrupt.py)."""
    storage = Storage.open_uri(str(tmp_path / "run"))
    storage.write_text("old\n", "data", "heldout", "domain.jsonl")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(os, "fsync", interrupted)
        storage.write_text("new\n", "data", "heldout", "domain.jsonl")
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 1000)

    def half_copied(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"x" * 10)
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(shutil, "copyfile", half_copied)
        storage.put_file(str(source), "data", "heldout", "domain.jsonl")
    assert storage.read_bytes("data", "heldout", "domain.jsonl") == b"old\n"
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["data", "domain.jsonl", "heldout"]


def test_a_cleanup_that_fails_does_not_hide_the_writes_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the temporary file cannot be removed either (a read-only or vanished directory), the error the caller
    sees is the write's own, not the cleanup's."""
    storage = Storage.open_uri(str(tmp_path / "run"))

    def full(*args: object) -> None:
        raise OSError("disk full")

    removals: list[str] = []

    def refused(path: str) -> None:
        removals.append(path)
        raise PermissionError(f"cannot remove {path}")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full") as raised:
        patched.setattr(os, "fsync", full)
        patched.setattr(os, "remove", refused)
        storage.write_text("new\n", "data", "domain.jsonl")
    assert len(removals) == 1 and ".tmp-" in removals[0]  # the cleanup was tried, and the note says it failed
    assert raised.value.__notes__ == [f"temporary file {removals[0]} was left behind: cannot remove {removals[0]}"]


def test_an_interrupted_download_to_the_local_cache_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """local_copy downloads through the same staging: a connection lost mid-download leaves no partial file in
    the cache (a later call would take it for the whole object)."""
    remote = Storage.open_uri(f"memory://cache-test-{uuid.uuid4().hex}")
    remote.write_bytes(b"y" * 100, "data", "tokens.bin")

    def half(rpath: str, lpath: str, **kwargs: object) -> None:
        Path(lpath).write_bytes(b"y" * 10)
        raise ConnectionError("reset")

    monkeypatch.setattr(remote.fs, "get_file", half)
    with pytest.raises(ConnectionError):
        remote.local_copy("data", "tokens.bin", cache_dir=str(tmp_path / "cache"))
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
