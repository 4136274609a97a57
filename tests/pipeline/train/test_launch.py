"""The launcher's rendezvous across nodes: each pod runs its own launcher, and they must meet."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cpt.api import ContinuedPretrain
from cpt_pipeline.pid1 import exit_code
from cpt_pipeline.train.launch import shutdown_option, shutdown_seconds
from tests.cluster.helpers import eventually
from tests.conftest import REPO

WORKER = "import os; print('worker', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], flush=True)"
LAUNCHER = """
import sys
from cpt.api import ContinuedPretrain
from cpt_pipeline.train.launch import launch
spec = ContinuedPretrain.model_validate_json(open(sys.argv[1]).read()).spec
sys.exit(launch(spec, ["-c", sys.argv[2]]))
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_launched_without_a_run_id_meet_and_run_every_rank(tmp_path: Path) -> None:
    """Two launchers (node ranks 0 and 1, as the operator's env gives two pods) with no PET_RUN_ID: before the
    fix each drew its own run id, so their rendezvous keys never met and the gang hung at step 0."""
    spec = _spec_file(tmp_path, 2)
    port = str(_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_", "JOB_COMPLETION"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", LAUNCHER, str(spec), WORKER],
            cwd=REPO,
            env={**env, "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "worker 0 of 2" in outputs[0] and "worker 1 of 2" in outputs[1], outputs


def _spec_file(tmp_path: Path, nodes: int, **run_policy: Any) -> Path:
    doc = {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "launch"},
        "spec": {
            "model": {"uri": "org/model"},
            "data": {"sources": [{"name": "d", "uri": "/data"}], "sequenceLength": 64, "tokenBudget": 10**6},
            "training": {"nodes": nodes, "procsPerNode": 1},
            "storage": {"uri": "s3://bucket/launch"},
            "runPolicy": run_policy,
        },
    }
    spec = tmp_path / f"spec-{nodes}.json"
    spec.write_text(ContinuedPretrain.model_validate(doc).model_dump_json(by_alias=True))
    return spec


def _launcher(spec: Path, worker: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_", "JOB_COMPLETION", "KUBECPT_"))}
    return subprocess.Popen(
        [sys.executable, "-P", "-c", LAUNCHER, str(spec), worker],
        cwd=REPO,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_gang_whose_other_node_never_comes_ends_as_a_preemption(tmp_path: Path) -> None:
    """A 2-node gang of which one pod cannot be placed: node 0 waits `rendezvousTimeoutSeconds` for node 1,
    node 1 (alone) for node 0's store; both exit 75 so the JobSet restarts the gang without counting a restart.
    Before the fix they waited torch's 900 s and then died with exit 1 (a counted restart)."""
    spec = _spec_file(tmp_path, nodes=2, rendezvousTimeoutSeconds=10)
    alone = {
        rank: _launcher(
            spec, WORKER, PET_NODE_RANK=str(rank), PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(_port())
        )
        for rank in (0, 1)
    }
    outputs = {}
    try:
        for rank, proc in alone.items():
            outputs[rank] = proc.communicate(timeout=150)[0]
    finally:
        for proc in alone.values():
            proc.kill()
    assert {rank: proc.returncode for rank, proc in alone.items()} == {0: 75, 1: 75}, outputs
    for output in outputs.values():
        assert "the gang did not meet within 10 s" in output, output[-3000:]
        assert "worker" not in output.replace("workers", "")  # no worker ever started


SLOW_SAVE = """
import signal, sys, time
def save(*_):
    time.sleep(20)  # a step, a save and an upload that take longer than the launcher's shutdown time
    print("saved", flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, save)
print("ready", flush=True)
time.sleep(120)
"""


def test_the_launcher_gives_its_workers_the_operators_shutdown_time_then_kills_them(tmp_path: Path) -> None:
    """KUBECPT_SHUTDOWN_SECONDS (the pod's grace period less a margin) is torchrun's shutdown timeout: the
    agent forwards SIGTERM, waits that long, then kills. Before the fix it waited torch's own 30 s whatever the
    pod's grace period, so this worker saved (at 20 s) although the launcher was told 2 s."""
    launcher = _launcher(_spec_file(tmp_path, nodes=1), SLOW_SAVE, KUBECPT_SHUTDOWN_SECONDS="2")
    try:
        assert launcher.stdout is not None
        lines: list[str] = []
        for line in launcher.stdout:
            lines.append(line)
            if line.strip() == "ready":
                break
        signalled = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        rest = launcher.communicate(timeout=60)[0]
    finally:
        launcher.kill()
    output = "".join(lines) + rest
    assert launcher.returncode == 75, output[-3000:]
    assert "saved" not in output and time.monotonic() - signalled < 15, output[-3000:]


def test_without_the_operators_variable_the_shutdown_time_comes_from_the_spec() -> None:
    """The local runner sets no KUBECPT_SHUTDOWN_SECONDS: the spec's grace period less the same margin."""
    spec = ContinuedPretrain.model_validate(
        {
            "apiVersion": "cpt.kubecpt.dev/v1alpha1",
            "kind": "ContinuedPretrain",
            "metadata": {"name": "launch"},
            "spec": {
                "model": {"uri": "org/model"},
                "data": {"sources": [{"name": "d", "uri": "/data"}], "sequenceLength": 64, "tokenBudget": 10**6},
                "storage": {"uri": "/tmp/launch"},
                "runPolicy": {"terminationGracePeriodSeconds": 120},
            },
        }
    ).spec
    assert shutdown_seconds(spec, {}) == 110
    assert shutdown_seconds(spec, {"KUBECPT_SHUTDOWN_SECONDS": "45"}) == 45


def _in_rendezvous_as_pid_1(spec: Path, rank: int, port: int) -> tuple[subprocess.Popen[str], int, list[str]]:
    """The training stage as PID 1 of its own PID namespace (as in a container), node `rank` of 2, alone in its
    rendezvous; returns it once it logged the rendezvous, with its PID 1 as seen from here."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_", "JOB_COMPLETION", "KUBECPT_"))}
    env = {**clean, "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    assert os.geteuid() == 0, "needs root: unshare --pid (CI runs as root)"
    stage = [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)]  # the container's command
    argv = ["unshare", "--pid", "--fork", "--kill-child", *stage]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "rendezvous 127.0.0.1" in line:
            break
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, (children, lines)
    return proc, int(children[0]), lines


def test_a_launcher_that_is_pid_1_leaves_its_rendezvous_on_sigterm(tmp_path: Path) -> None:
    """A pod deleted while its launcher waits for the gang (a restart whose other pod is gone again): the
    launcher is the container's PID 1, for which the kernel drops a signal that has no handler, and torch's
    rendezvous waits in native code, where no Python handler runs: before the fix it ignored SIGTERM and held the
    node for the whole grace period (300 s) until SIGKILL. Now (pipeline/pid1.py) it exits 75 (a preemption) at
    once, for node 0 (serving the store) and node 1 (waiting for it)."""
    spec = _spec_file(tmp_path, nodes=2, rendezvousTimeoutSeconds=600)
    for rank in (0, 1):
        proc, pid, lines = _in_rendezvous_as_pid_1(spec, rank, _port())
        try:
            time.sleep(1)  # into the store's wait
            os.kill(pid, signal.SIGTERM)
            try:
                rest = proc.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired:
                rest = "(still waiting in the rendezvous 60 s after SIGTERM)"
        finally:
            proc.kill()
            proc.wait()
        output = "".join(lines) + rest
        assert proc.returncode == 75, f"node {rank}: {output[-3000:]}"


def test_a_sigterm_during_the_stages_start_up_is_not_dropped(tmp_path: Path) -> None:
    """A pod deleted just after its container started: PID 1 blocks SIGTERM as the package is imported, before the
    stage's imports, so the signal waits for the parent to forward it (unblocked, PID 1 would drop it)."""
    spec = _spec_file(tmp_path, nodes=2, rendezvousTimeoutSeconds=600)
    assert os.geteuid() == 0, "needs root: unshare --pid (CI runs as root)"
    stage = [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)]
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", *stage],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        pid = int(
            eventually(
                lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[:1],
                timeout=30,
                interval=0.001,
                what="PID 1 started",
            )[0]
        )
        blocked = f"/proc/{pid}/status"
        eventually(lambda: _blocks(blocked, signal.SIGTERM), timeout=30, interval=0.001, what="SIGTERM blocked")
        os.kill(pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 75, output[-3000:]
    assert "stage stopped by SIGTERM before it handled the signal: exit 75" in output, output[-3000:]


def _blocks(status_file: str, signum: int) -> bool:
    mask = next(line.split()[1] for line in Path(status_file).read_text().split("\n") if line.startswith("SigBlk"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def test_a_supervised_stages_exit_code_is_its_childs_and_a_sigterm_is_a_preemption_only_for_training() -> None:
    sent = {signal.SIGTERM}
    assert [exit_code(c, 75, sent) for c in (0, 3, 75, -signal.SIGTERM, -signal.SIGKILL)] == [0, 3, 75, 75, 137]
    assert exit_code(-signal.SIGTERM, None, sent) == 143  # preprocess, dedup, evaluate, report: as a shell would say
    assert exit_code(-signal.SIGTERM, 75, set()) == 143  # not the pod's stop: no preemption


def test_a_torch_whose_launcher_has_no_shutdown_timeout_still_launches(caplog: pytest.LogCaptureFixture) -> None:
    """torch 2.11's LaunchConfig has no `shutdown_timeout` (seen on a GPU machine: 'LaunchConfig.__init__() got an
    unexpected keyword argument'); the option is passed only where it exists, and its absence is said."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    assert shutdown_option(LaunchConfig, 45) == {"shutdown_timeout": 45}  # this torch (2.13)

    @dataclasses.dataclass
    class Older:
        min_nodes: int = 1

    with caplog.at_level("WARNING"):
        assert shutdown_option(Older, 45) == {}
    assert "no shutdown_timeout: workers get its default 30 s, not 45 s" in caplog.text
