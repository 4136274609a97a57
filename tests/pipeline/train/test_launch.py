"""The launcher's rendezvous across nodes: each pod runs its own launcher, and they must meet."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from cpt.api import ContinuedPretrain
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
    doc = {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "launch"},
        "spec": {
            "model": {"uri": "org/model"},
            "data": {"sources": [{"name": "d", "uri": "/data"}], "sequenceLength": 64, "tokenBudget": 10**6},
            "training": {"nodes": 2, "procsPerNode": 1},
            "storage": {"uri": "s3://bucket/launch"},
        },
    }
    spec = tmp_path / "spec.json"
    spec.write_text(ContinuedPretrain.model_validate(doc).model_dump_json(by_alias=True))
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
