"""Progress writes survive a briefly unreachable object store: a connect timeout while writing
train/progress.json killed a trainer on the real node (exit 5, a counted gang restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpt_pipeline.storage import Storage
from cpt_pipeline.train import progress as progress_module
from cpt_pipeline.train.progress import Progress


class ConnectTimeoutError(Exception):
    """Named as botocore's: exit_code_for reads it as 'unavailable'."""


class FlakyStorage(Storage):
    """A local storage whose writes fail with a connect timeout a given number of times."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(str(root), Storage.open_uri(str(root)).fs)
        self.failures = failures

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectTimeoutError('Connect timeout on endpoint URL: "http://s3/bucket/train/progress.json"')
        super().write_bytes(data, *parts)


def progress(storage: Storage) -> Progress:
    return Progress(storage, 4, 100, 1.0, None, 1, 1, None)


def step(p: Progress, n: int) -> dict[str, Any]:
    return p.step(n, loss=2.0, lr=1e-3, seconds=0.1, latest=None, restarts=0)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "RETRY_DELAY_SECONDS", 0.0, raising=False)


def test_a_transient_write_error_is_retried(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path, failures=2)
    p = progress(storage)
    step(p, 1)
    assert storage.read_json("train", "progress.json")["step"] == 1 and storage.failures == 0


def test_a_store_down_for_longer_costs_a_warning_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage(
        tmp_path, failures=getattr(progress_module, "WRITE_ATTEMPTS", 3) * 2
    )  # both files of step 1 fail
    p = progress(storage)
    step(p, 1)
    assert "could not write train/progress.json" in caplog.text and not storage.exists("train", "progress.json")
    step(p, 2)  # the store is back: both files are rewritten whole
    assert storage.read_json("train", "progress.json")["step"] == 2
    assert [line for line in storage.read_bytes("train", "metrics.jsonl").decode().splitlines()][-1].startswith(
        '{"step": 2'
    )
    assert len(storage.read_bytes("train", "metrics.jsonl").decode().splitlines()) == 2


def test_other_errors_are_not_swallowed(tmp_path: Path) -> None:
    class Broken(Storage):
        def write_bytes(self, data: bytes, *parts: str) -> None:
            raise PermissionError("Access Denied")

    p = progress(Broken(str(tmp_path), Storage.open_uri(str(tmp_path)).fs))
    with pytest.raises(PermissionError):
        step(p, 1)
