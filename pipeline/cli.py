"""Subcommands the pipeline adds to the `cpt` CLI (registered under the `kubecpt.cli` entry-point group)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from cpt_pipeline.report.marks import Marks, marks_from
    from cpt_pipeline.report.report import build_report
    from cpt_pipeline.storage import Storage

    target, marks = args.target, Marks()
    if Path(target).is_file():
        from cpt_pipeline.__main__ import load_spec

        spec = load_spec(target)
        storage, marks = Storage.from_spec(spec.storage), marks_from(spec.to_api())
    else:
        storage = Storage.open_uri(target, endpoint=args.endpoint)
    try:
        result = build_report(storage, name=args.title, marks=marks)
    except FileNotFoundError as error:
        print(f"cpt report: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="render Table 1, the loss curve and the token-efficiency figure")
    parser.add_argument("target", help="a ContinuedPretrain YAML (its spec.storage) or a run's storage URI")
    parser.add_argument("--endpoint", help="S3 endpoint for a storage URI")
    parser.add_argument("--title", default="Continued pre-training report")
    parser.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from cpt.stages import Stage
    from cpt_pipeline.local import run_pipeline

    stages = [Stage(s) for s in args.stages.split(",")] if args.stages else None
    try:
        run_pipeline(Path(args.file), stages)
    except (RuntimeError, ValueError) as error:
        print(f"cpt run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM or SIGHUP: 130, 143 or 129
        print("cpt run: interrupted; run it again to resume (finished stages are skipped)", file=sys.stderr)
        return 128 + getattr(error, "signum", signal.SIGINT)
    return 0


def add_run(subparsers: argparse._SubParsersAction) -> None:
    from cpt.stages import Stage

    parser = subparsers.add_parser("run", help="run every stage of a ContinuedPretrain locally (no cluster)")
    parser.add_argument("file", help="ContinuedPretrain YAML")
    parser.add_argument("--stages", help=f"comma-separated subset of: {','.join(s.value for s in Stage)}")
    parser.set_defaults(func=_run)
