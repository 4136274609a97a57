"""Ctrl-C during `cpt run` at fixed points of a stage's start-up, run and shutdown (a stage process waits at a
named pause point, pipeline/pause.py, and says so; only then the test interrupts): always exit 130 with the
resume hint, no stage process left running, nothing half-written visible, and a rerun resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cpt.kube_yaml import dump
from tests.conftest import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
CPT = str(Path(sys.executable).parent / "cpt")


def tiny_spec(run: Path) -> dict:
    """The tiny example on the shared data: 6 steps of 8 x 256 tokens, a checkpoint after every step."""
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    shared, spec = shared_data_dir(), doc["spec"]
    spec["model"]["uri"] = str(shared / "models" / "stories260K")
    spec["data"]["sources"][0]["uri"] = str(shared / "corpora" / "openstax_stem.jsonl")
    spec["data"]["replay"]["source"]["uri"] = str(shared / "corpora" / "stories260k_samples.jsonl")
    spec["data"].update(tokenBudget=2048 * 6, milestones=[])
    spec["training"]["checkpoint"] = {"intervalSteps": 1, "keepLast": 3}
    spec["storage"]["uri"] = str(run)
    return doc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose preprocess and dedup stages are done, copied by each training case."""
    base = tmp_path_factory.mktemp("prepared")
    (base / "run.yaml").write_text(dump(tiny_spec(base / "run")))
    result = subprocess.run([CPT, "run", str(base / "run.yaml"), "--stages", "preprocess,dedup"], capture_output=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run"


def processes_with(marker: str) -> list[str]:
    """The live processes (not zombies) whose environment holds `marker`: every process the run started, in
    any session (torchrun starts its workers in sessions of their own), still there."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if marker.encode() in (proc / "environ").read_bytes() and state != "Z":
                left.append(proc.name + " " + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours
            continue
    return left


def interrupt_at(
    tmp_path: Path, point: str, stages: str, signum: int = signal.SIGINT
) -> tuple[subprocess.CompletedProcess, str]:
    """`cpt run` until a stage process reaches `point`, then `signum` to the runner alone (as `kill -INT` does;
    a terminal's Ctrl-C reaches the same processes, each stage running in its own process group). After a
    SIGKILL, which the runner cannot pass on, its stage processes must end by themselves."""
    marker = tmp_path / "paused"
    env = {**os.environ, "CPT_FAULT_PAUSE_AT": point, "CPT_FAULT_PAUSE_FILE": str(marker)}
    process = subprocess.Popen(
        [CPT, "run", str(tmp_path / "run.yaml"), "--stages", stages],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600  # a bound for a broken run only: the interrupt waits for the marker
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, f"{point} never reached: {process.stderr}"
        time.sleep(0.1)
    os.kill(process.pid, signum)
    out, err = process.communicate(timeout=300)
    left = processes_with(f"CPT_FAULT_PAUSE_FILE={marker}")
    deadline = time.monotonic() + 120  # generous: after a SIGKILL, the stages end on their own signal
    while left and signum == signal.SIGKILL and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with(f"CPT_FAULT_PAUSE_FILE={marker}")
    for line in left:  # not left behind by a failing test either
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, f"processes left running after the interrupt at {point}: {left}"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), marker.read_text().strip()


def assert_nothing_half_written(run: Path) -> None:
    """No temporary file, every JSON whole, `latest` names a checkpoint whose plan was written before it."""
    assert not [str(p) for p in run.rglob("*.tmp-*")]
    for path in run.rglob("*.json"):
        json.loads(path.read_text())
    if (run / "checkpoints" / "latest").exists():
        tag = (run / "checkpoints" / "latest").read_text().strip()
        assert (run / "checkpoints" / tag).is_dir() and list((run / "checkpoints" / tag).glob("*.json"))


def assert_interrupted(result: subprocess.CompletedProcess, stage: str, code: int = 130) -> None:
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"{stage}: FAILED after" in result.stdout and "interrupted" in result.stdout, result.stdout
    assert "cpt run: interrupted; run it again to resume" in result.stderr
    assert "Traceback" not in result.stderr and "exited with" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("point", "stage"), [("preprocess:startup", "preprocess"), ("dedup:shutdown", "dedup")], ids=lambda v: v
)
def test_ctrl_c_in_preprocessing(tmp_path: Path, point: str, stage: str) -> None:
    (tmp_path / "run.yaml").write_text(dump(tiny_spec(tmp_path / "run")))
    result, _ = interrupt_at(tmp_path, point, "preprocess,dedup")
    assert_interrupted(result, stage)
    assert_nothing_half_written(tmp_path / "run")


@pytest.mark.parametrize(
    "point",
    ["train:startup", "train-worker:startup", "train-worker:step#2", "train-worker:checkpoint#3", "train:shutdown"],
)
def test_ctrl_c_in_training(tmp_path: Path, prepared: Path, point: str) -> None:
    shutil.copytree(prepared, tmp_path / "run")
    (tmp_path / "run.yaml").write_text(dump(tiny_spec(tmp_path / "run")))
    result, _ = interrupt_at(tmp_path, point, "train")
    assert_interrupted(result, "train")
    run = tmp_path / "run"
    assert_nothing_half_written(run)
    assert (run / "logs" / "train.log").exists()
    if point == "train-worker:checkpoint#3":  # step 3's files are written, `latest` still names step 2's
        assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
        rerun = subprocess.run([CPT, "run", str(tmp_path / "run.yaml"), "--stages", "train"], capture_output=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "resum" in (run / "logs" / "train.log").read_text().split("==== cpt run: train")[-1]


def test_hangup_in_preprocessing(tmp_path: Path) -> None:
    """An ssh hang-up ends the stages too (they ran on before), and the run exits 129 with the resume hint."""
    (tmp_path / "run.yaml").write_text(dump(tiny_spec(tmp_path / "run")))
    result, _ = interrupt_at(tmp_path, "preprocess:startup", "preprocess,dedup", signal.SIGHUP)
    assert_interrupted(result, "preprocess", 129)


def test_sigterm_in_training(tmp_path: Path, prepared: Path) -> None:
    """`kill` or `timeout` ends torchrun's workers too (they trained on before), and the run exits 143."""
    shutil.copytree(prepared, tmp_path / "run")
    (tmp_path / "run.yaml").write_text(dump(tiny_spec(tmp_path / "run")))
    result, _ = interrupt_at(tmp_path, "train-worker:startup", "train", signal.SIGTERM)
    assert_interrupted(result, "train", 143)
    assert_nothing_half_written(tmp_path / "run")


def test_sigkill_of_the_runner_ends_training(tmp_path: Path, prepared: Path) -> None:
    """A SIGKILLed runner cannot pass anything on: torchrun and its workers die with it (PR_SET_PDEATHSIG), so
    a later `cpt run` never has two trainers committing `latest`."""
    shutil.copytree(prepared, tmp_path / "run")
    (tmp_path / "run.yaml").write_text(dump(tiny_spec(tmp_path / "run")))
    result, _ = interrupt_at(tmp_path, "train-worker:startup", "train", signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
