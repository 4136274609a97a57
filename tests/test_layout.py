"""Layout rules: the operator never needs torch, the pipeline never needs kopf, the API needs neither."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("cpt_operator", ["torch", "transformers", "deepspeed", "cpt_pipeline"]),
        ("cpt_pipeline", ["kopf", "kubernetes", "cpt_operator"]),
        ("cpt.cli", ["torch", "kopf", "kubernetes", "transformers"]),
    ],
)
def test_imports_without_the_other_side(module: str, blocked: list[str]) -> None:
    code = BLOCK.format(names=blocked) + f"import {module}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install -e .[dev])"
    result = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_operator_folder_maps_to_cpt_operator() -> None:
    import cpt_operator

    assert Path(cpt_operator.__file__).parent == REPO / "operator"
