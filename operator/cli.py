"""Subcommands the operator adds to the `cpt` CLI: `cpt render FILE` and `cpt operator`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _render(args: argparse.Namespace) -> int:
    import yaml

    from cpt.validation import validate_file
    from cpt_operator.children import every_child
    from cpt_operator.config import OperatorConfig

    resources, problems = validate_file(Path(args.file))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    config = OperatorConfig.from_env()
    objects = [child for resource in resources for child in every_child(resource, config)]
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


def add_render(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="print the objects the operator creates for a ContinuedPretrain")
    parser.add_argument("file", help="ContinuedPretrain YAML")
    parser.set_defaults(func=_render)


def _operator(args: argparse.Namespace) -> int:
    from cpt_operator.__main__ import main

    return main(["--namespace", args.namespace] if args.namespace else [])


def add_operator(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the operator (kopf, standalone, one replica)")
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.set_defaults(func=_operator)
