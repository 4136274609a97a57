"""Under a lasting object-store fault, a storage operation gives up (exit 5, one line) before the training ranks
waiting for it in a collective hit the process group's timeout: one retry layer, a deadline per operation,
and a process-group timeout derived from that deadline."""

from __future__ import annotations

import pytest
from s3fs import S3FileSystem

from cpt_pipeline.storage import (
    S3_ATTEMPTS_ENV,
    S3_DEADLINE_ENV,
    S3_TIMEOUT_ENV,
    request_worst_case_seconds,
    s3_deadline,
    storage_options,
)
from cpt_pipeline.train.distributed import process_group_timeout

SETTINGS = [{}, {S3_TIMEOUT_ENV: "1", S3_ATTEMPTS_ENV: "2"}, {S3_DEADLINE_ENV: "3600"}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "test-proxy", "long-deadline"])
def test_storage_gives_up_before_the_process_group(monkeypatch: pytest.MonkeyPatch, settings: dict) -> None:
    for name in (S3_TIMEOUT_ENV, S3_ATTEMPTS_ENV, S3_DEADLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert request_worst_case_seconds() <= s3_deadline() < process_group_timeout().total_seconds()
    options = storage_options("s3://bucket/run")
    assert options["config_kwargs"]["retries"]["total_max_attempts"] == 1  # botocore: one attempt
    assert S3FileSystem.retries == int(settings.get(S3_ATTEMPTS_ENV, 5))  # s3fs: the one retry layer
