"""Our status as GitOps tools read it, on their own libraries: Argo CD's health.lua on gopher-lua (with Argo
CD's VM setup and its health_test.yaml layout), Flux's default kstatus, and Flux's healthCheckExprs on cel-go."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "manifests" / "argocd" / "cpt.kubecpt.dev" / "ContinuedPretrain"
FIXTURES = sorted((HEALTH / "testdata").glob("*.yaml"))
FLUX = REPO / "manifests" / "flux" / "kustomization.yaml"


@pytest.fixture(scope="module")
def checker() -> str:
    result = subprocess.run(["bash", str(REPO / "tests" / "gitops" / "build.sh")], capture_output=True, text=True)
    assert result.returncode == 0, f"tests/gitops/build.sh failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


def check(checker: str, *args: str) -> dict[str, dict[str, Any]]:
    result = subprocess.run([checker, *args], capture_output=True, text=True, cwd=HEALTH, timeout=60)
    assert result.returncode == 0, result.stderr
    return {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}


def test_argocd_health_lua_passes_its_health_test_yaml(checker: str) -> None:
    cases = yaml.safe_load((HEALTH / "health_test.yaml").read_text())["tests"]
    assert {Path(c["inputPath"]).name for c in cases} == {f.name for f in FIXTURES}, "a fixture has no test case"
    got = check(checker, "lua", "health.lua", *(c["inputPath"] for c in cases))
    for case in cases:
        have = got[Path(case["inputPath"]).name]
        assert not have.get("error"), have
        assert (have["status"], have["message"]) == (case["healthStatus"]["status"], case["healthStatus"]["message"])


def test_health_lua_needs_no_string_or_math_library(checker: str, tmp_path: Path) -> None:
    """The VM really lacks them: a script calling string.format fails there, so ours passing means something."""
    script = tmp_path / "uses-string.lua"
    script.write_text('return {status = "Healthy", message = string.format("%d", 1)}')
    result = check(checker, "lua", str(script), str(FIXTURES[0]))
    assert "string" in next(iter(result.values()))["error"]
    source = (HEALTH / "health.lua").read_text()
    assert "string." not in source and "math." not in source


KSTATUS = {  # Flux with no configuration: sigs.k8s.io/cli-utils kstatus
    "new.yaml": "Current",  # kstatus reads an object with no status as Current; the operator writes one at once
    "training.yaml": "InProgress",
    "spec-changed.yaml": "InProgress",
    "succeeded.yaml": "Current",
    "extended.yaml": "InProgress",  # a Succeeded run whose budget grew: going on again (docs/operator.md)
    "failed.yaml": "Failed",
    "stalled.yaml": "Failed",
    "suspended.yaml": "InProgress",
    "queued.yaml": "InProgress",
}


def test_kstatus_reads_our_conditions_with_no_configuration(checker: str) -> None:
    got = check(checker, "kstatus", *(f"testdata/{f.name}" for f in FIXTURES))
    assert {name: r["status"] for name, r in got.items()} == {f.name: KSTATUS[f.name] for f in FIXTURES}
    assert got["stalled.yaml"]["message"] == 'stem-cpt-preprocess-0: secret "s3-credentials" not found'


FLUX_CEL = {  # the healthCheckExprs snippet: Current once the operator accepted the generation
    "training.yaml": "Current",
    "spec-changed.yaml": "InProgress",
    "succeeded.yaml": "Current",
    "extended.yaml": "Current",  # the operator accepted the grown budget
    "failed.yaml": "Failed",
    "stalled.yaml": "Failed",
    "suspended.yaml": "Current",
    "queued.yaml": "Current",  # accepted: waiting in the queue is not a failure
}


def test_the_flux_health_check_exprs_on_cel(checker: str) -> None:
    (exprs,) = yaml.safe_load(FLUX.read_text())["spec"]["healthCheckExprs"]
    args = [exprs.get("inProgress", ""), exprs.get("failed", ""), exprs["current"]]
    got = check(checker, "cel", *args, *(f"testdata/{f.name}" for f in FIXTURES))
    assert {n: r.get("status") for n, r in got.items() if n != "new.yaml"} == FLUX_CEL
    # before the operator writes a status, the expressions cannot be evaluated: Flux retries (not Current)
    assert "status" in got["new.yaml"]["error"]
