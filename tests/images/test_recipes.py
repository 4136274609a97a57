"""The production image recipes keep their properties: a non-root user, one entrypoint in exec form (the
same as the local worker image's), and an operator image without the ML stack."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = {name: REPO / "images" / name / "Dockerfile" for name in ("operator", "worker")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_image_runs_as_a_non_root_user(name: str) -> None:
    users = [args for keyword, args in instructions(RECIPES[name]) if keyword == "USER"]
    assert users, f"{name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: the last USER is {users[-1]!r}, not a numeric non-root uid"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_one_entrypoint_in_exec_form_running_python_without_the_working_directory(name: str) -> None:
    entrypoints = [args for keyword, args in instructions(RECIPES[name]) if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1, f"{name}: {len(entrypoints)} ENTRYPOINTs"
    argv = json.loads(entrypoints[0])  # exec form: a JSON list, no shell
    assert argv[:3] == ["python", "-P", "-m"], argv
    assert not [k for k, _ in instructions(RECIPES[name]) if k == "CMD"], f"{name}: CMD would add arguments"


def test_the_worker_images_share_the_entrypoint() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", REPO / "images" / "local" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    (entrypoint,) = [args for keyword, args in instructions(RECIPES["worker"]) if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == build.ENTRYPOINT == ["python", "-P", "-m", "cpt_pipeline"]


def test_the_operator_image_installs_no_ml_stack() -> None:
    runs = " ".join(args for keyword, args in instructions(RECIPES["operator"]) if keyword == "RUN")
    assert ".[operator]" in runs and "worker" not in runs and "torch" not in runs
    copied = [args for keyword, args in instructions(RECIPES["operator"]) if keyword == "COPY"]
    assert not [c for c in copied if c.startswith("pipeline ")], "the pipeline's code stays out of the operator"
