"""Launch torchrun on this node, with the same environment contract on Kubernetes and locally.

Node rank: `JOB_COMPLETION_INDEX` (an Indexed Job pod) or `PET_NODE_RANK`, else 0. Nodes and processes per
node: `PET_NNODES` / `PET_NPROC_PER_NODE` (Kubeflow Trainer names), else the spec. Rendezvous:
`PET_MASTER_ADDR`/`MASTER_ADDR` and `PET_MASTER_PORT`/`MASTER_PORT`. On one node with none of these set,
127.0.0.1 and a free port are used. Run id: `PET_RUN_ID` (the operator sets the JobSet's name); without it, every
node of a gang derives the same id from the rendezvous endpoint, since nodes that drew their own would never
meet. The workers' exit codes are passed on: preemption (75), a non-finite
loss (3) and bad input (4) stay distinguishable from a crash.

On SIGTERM the agent forwards the signal and gives the workers `KUBECPT_SHUTDOWN_SECONDS` (the pod's grace period
less a margin; locally the spec's) to finish the step and save before it kills them. A gang that does not meet
within `runPolicy.rendezvousTimeoutSeconds` (a node that cannot be placed) exits 75 too: a free restart.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Mapping

from cpt.api import ContinuedPretrainSpec
from cpt.api.platform import SHUTDOWN_ENV
from cpt_pipeline.train.exit_codes import DISTINCT, EXIT_BAD_INPUT, EXIT_PREEMPTED

log = logging.getLogger(__name__)


def _env_int(*names: str, default: int) -> int:
    return next((int(os.environ[n]) for n in names if os.environ.get(n)), default)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_id(nodes: int, address: str, port: int) -> str:
    """One id per gang: PET_RUN_ID, else one every node derives alike (several nodes), else a fresh one."""
    if os.environ.get("PET_RUN_ID"):
        return os.environ["PET_RUN_ID"]
    return f"{address}-{port}" if nodes > 1 else uuid.uuid4().hex


def shutdown_seconds(spec: ContinuedPretrainSpec, environ: Mapping[str, str]) -> int:
    """How long the agent waits for its workers after forwarding SIGTERM before it kills them: the operator's
    value for this pod (its grace period less a margin), else (the local runner) the spec's."""
    return int(environ.get(SHUTDOWN_ENV) or spec.run_policy.worker_shutdown_seconds)


def shutdown_option(config_class: type, seconds: int) -> dict[str, int]:
    """torchrun's `shutdown_timeout`, where this torch has it (LaunchConfig gained it after 2.11); an older one
    gives its workers its own fixed 30 s, said once."""
    import dataclasses

    if "shutdown_timeout" in {f.name for f in dataclasses.fields(config_class)}:
        return {"shutdown_timeout": seconds}
    log.warning("this torch's launcher has no shutdown_timeout: workers get its default 30 s, not %d s", seconds)
    return {}


def launch(spec: ContinuedPretrainSpec, worker_args: list[str]) -> int:
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nodes = _env_int("PET_NNODES", default=spec.training.nodes)
    procs = _env_int("PET_NPROC_PER_NODE", default=spec.training.procs_per_node)
    node_rank = _env_int("JOB_COMPLETION_INDEX", "PET_NODE_RANK", default=0)
    address = os.environ.get("PET_MASTER_ADDR") or os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = _env_int("PET_MASTER_PORT", "MASTER_PORT", default=_free_port() if nodes == 1 else 29500)
    if not 0 <= node_rank < nodes:
        print(f"train failed: node rank {node_rank} is outside {nodes} node(s) (PET_NNODES / spec.training.nodes)")
        return EXIT_BAD_INPUT
    config = LaunchConfig(
        min_nodes=nodes,
        max_nodes=nodes,
        nproc_per_node=procs,
        run_id=_run_id(nodes, address, port),
        rdzv_backend="static",
        rdzv_endpoint=f"{address}:{port}",
        rdzv_configs={"rank": node_rank, "timeout": spec.run_policy.rendezvous_timeout_seconds},
        max_restarts=0,
        monitor_interval=0.5,
        **shutdown_option(LaunchConfig, shutdown_seconds(spec, os.environ)),
    )
    log.info("torchrun: node %d of %d, %d process(es), rendezvous %s:%d", node_rank, nodes, procs, address, port)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*worker_args)
    except SignalException as error:
        # The pod was asked to stop (preemption, eviction): the agent forwarded the signal, the workers saved a
        # checkpoint if they could, and `latest` names only complete checkpoints, so a restart resumes safely.
        log.warning("launcher received signal %s: exiting with the preemption code", error.sigval)
        return EXIT_PREEMPTED
    except DistError as error:
        # The static rendezvous timed out (DistStoreError on node 0: not every node joined; DistNetworkError on
        # the others: node 0's store never answered): part of the gang could not be placed or started. Like a
        # preemption, the gang restarts (exit 75) without using up maxRestarts.
        timeout = spec.run_policy.rendezvous_timeout_seconds
        print(f"train stopped: the gang did not meet within {timeout} s (runPolicy.rendezvousTimeoutSeconds): {error}")
        log.warning("rendezvous of node %d failed (%s): exiting with the preemption code", node_rank, error)
        return EXIT_PREEMPTED
    except ChildFailedError as error:
        codes = [failure.exitcode for failure in error.failures.values()]
        log.error("training worker(s) failed with exit code(s) %s", codes)
        return next((c for c in DISTINCT if c in codes), codes[0] if codes and codes[0] > 0 else 1)
    return 0
