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


def _build_context(name: str, root: Path) -> Path:
    """The files the recipe COPYs into its working directory, and the folders its RUN mkdir -p makes there."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for keyword, args in instructions(RECIPES[name]):
        if keyword == "COPY":
            *sources, target = args.split()
            for source in sources:
                into = root / target / Path(source).name if target.endswith("/") else root / target
                into.parent.mkdir(parents=True, exist_ok=True)
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, into, ignore=ignore)
                else:
                    shutil.copy(REPO / source, into)
        elif keyword == "RUN" and args.startswith("mkdir -p "):
            for folder in args.removeprefix("mkdir -p ").split("&&")[0].split():
                (root / folder).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_package_builds_from_what_the_image_copies(name: str, tmp_path: Path) -> None:
    """pip builds kubecpt's wheel from the recipe's files alone, as `pip install .` in docker build does; the worker's
    wheel holds the compiled word loop, the operator's no pipeline code."""
    import subprocess
    import sys
    import zipfile

    context = _build_context(name, tmp_path / "src")
    argv = [sys.executable, "-P", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
    done = subprocess.run([*argv, str(tmp_path / "dist"), str(context)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kubecpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    compiled = [n for n in names if n.startswith("cpt_pipeline/preprocess/_words.")]
    pipeline_code = [n for n in names if n.startswith("cpt_pipeline/") and not n.endswith("__init__.py")]
    if name == "worker":
        assert [n for n in compiled if n.endswith(".so")], names
    else:
        assert not pipeline_code, pipeline_code
