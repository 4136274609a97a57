"""`python -m cpt_pipeline <stage> --spec FILE`: the entry point of every pipeline container."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cpt.api import ContinuedPretrainSpec
from cpt.exit_codes import EXIT_INVALID_SPEC, EXIT_PREEMPTED
from cpt.stages import Stage
from cpt.validation import validate_file
from cpt_pipeline.errors import exit_code_for, one_line
from cpt_pipeline.interrupt import die_with_runner
from cpt_pipeline.pause import pause_point
from cpt_pipeline.pid1 import supervise_if_pid_1
from cpt_pipeline.storage import export_object_store_settings

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in Indexed Job pods
log = logging.getLogger("cpt_pipeline")


def load_spec(path: str) -> ContinuedPretrainSpec:
    """The spec of a ContinuedPretrain file (YAML or JSON, a whole resource); exits with the problems."""
    resources, problems = validate_file(Path(path))
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SPEC)
    if len(resources) != 1:
        print(f"{path}: expected one ContinuedPretrain, found {len(resources)}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SPEC)
    return resources[0].spec


def _preprocess(args: argparse.Namespace, spec: ContinuedPretrainSpec) -> None:
    from cpt_pipeline.preprocess.runner import prepare
    from cpt_pipeline.storage import Storage

    world = args.world_size or spec.data.preprocessing.workers
    rank = args.rank if args.rank is not None else int(os.environ.get(INDEX_ENV, "0"))
    stats = prepare(spec, Storage.from_spec(spec.storage), rank, world)
    print(json.dumps({"stage": "preprocess", "rank": rank, "world_size": world, **stats.to_json()["counts"]}))


def _dedup(args: argparse.Namespace, spec: ContinuedPretrainSpec) -> None:
    from cpt_pipeline.preprocess.runner import reduce
    from cpt_pipeline.storage import Storage

    world = args.world_size or spec.data.preprocessing.workers
    index = args.rank if args.rank is not None else os.environ.get(INDEX_ENV)  # unset: every partition, then pack
    partition = None if index is None else int(index)
    summary = reduce(spec, Storage.from_spec(spec.storage), world, shard_rows=args.shard_rows, partition=partition)
    print(json.dumps({"stage": "dedup", **({"partition": partition} if partition is not None else {}), **summary}))


def _train(args: argparse.Namespace, spec: ContinuedPretrainSpec) -> int:
    """In a torchrun worker: train. Otherwise: launch torchrun for this node (the pod's main process)."""
    if "LOCAL_RANK" in os.environ:
        from cpt_pipeline.storage import Storage
        from cpt_pipeline.train.loop import run_worker
        from cpt_pipeline.train.quiet import silence_known_floods

        silence_known_floods()
        return run_worker(spec, Storage.from_spec(spec.storage))
    from cpt_pipeline.train.launch import launch

    return launch(spec, ["-P", "-m", "cpt_pipeline", "train", "--spec", args.spec])


def _evaluate(args: argparse.Namespace, spec: ContinuedPretrainSpec) -> None:
    from cpt_pipeline.evaluate.results import evaluate_run
    from cpt_pipeline.storage import Storage

    status = evaluate_run(spec, Storage.from_spec(spec.storage), target=args.target)
    print(json.dumps({"stage": "evaluate", **status}))


def _report(args: argparse.Namespace, spec: ContinuedPretrainSpec) -> None:
    from cpt_pipeline.report.marks import marks_from
    from cpt_pipeline.report.report import build_report
    from cpt_pipeline.status_push import push_status, read_status
    from cpt_pipeline.storage import Storage

    marks = marks_from(spec.to_api(), read_status())  # the status on a cluster: recommended export, segments
    result = build_report(Storage.from_spec(spec.storage), marks=marks)
    push_status("kubecpt-report", {"reportUri": result["reportUri"]})
    print(json.dumps({"stage": "report", **result}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt_pipeline")
    parser.add_argument("stage", choices=[str(s) for s in Stage])
    parser.add_argument("--spec", required=True, help="ContinuedPretrain resource (YAML or JSON)")
    parser.add_argument("--rank", type=int, help=f"worker rank / dedup partition (default: ${INDEX_ENV}, else 0 / all)")
    parser.add_argument("--world-size", type=int, help="workers (default: spec.data.preprocessing.workers)")
    parser.add_argument("--shard-rows", type=int, help="rows per shard (default: about 64 MB per shard)")
    parser.add_argument("--target", help="evaluate: only baseline, milestones, or one export (tokens-N)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of user errors too")
    args = parser.parse_args(argv)
    supervised = supervise_if_pid_1(EXIT_PREEMPTED if args.stage == Stage.TRAIN else None)
    if supervised is not None:  # this was the container's PID 1; the stage ran in its child
        return supervised
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    die_with_runner()
    role = f"{args.stage}-worker" if "LOCAL_RANK" in os.environ else args.stage  # a torchrun worker, or the stage
    pause_point(f"{role}:startup")
    spec = load_spec(args.spec)
    export_object_store_settings(spec.storage)
    handlers = {
        Stage.PREPROCESS: _preprocess,
        Stage.DEDUP: _dedup,
        Stage.TRAIN: _train,
        Stage.EVALUATE: _evaluate,
        Stage.REPORT: _report,
    }
    try:
        code = handlers[Stage(args.stage)](args, spec) or 0
        pause_point(f"{role}:shutdown")
        return code
    except Exception as error:
        code = exit_code_for(error)
        if code is None:
            raise  # a bug: keep the traceback
        log.debug("traceback of the error below", exc_info=error)
        print(one_line(args.stage, error), file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    exit_code = main()
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: see train/worker_exit.py
        from cpt_pipeline.train.worker_exit import leave

        leave(exit_code)
    sys.exit(exit_code)
