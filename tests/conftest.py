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
