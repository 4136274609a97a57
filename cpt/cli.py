"""The `cpt` command line: validate resources and print the CRD."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from cpt.crd import render_crd, render_helm_crd
from cpt.validation import validate_file

# Packages that add subcommands register `add(subparsers)` under this entry-point group, so this module never
# imports them (the operator image has no pipeline, and so no `cpt report`).
PLUGIN_GROUP = "kubecpt.cli"


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        resources, problems = validate_file(Path(name))
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            failed += 1
        else:
            names = ", ".join(r.metadata.get("name", "<unnamed>") for r in resources)
            print(f"{name}: valid ({names})")
    return 1 if failed else 0


def _crd(args: argparse.Namespace) -> int:
    text = render_helm_crd() if args.helm else render_crd()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt", description="Continued pre-training of small language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check ContinuedPretrain YAML files against the API rules")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=_validate)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.add_argument("--helm", action="store_true", help="as the Helm chart's template (charts/kubecpt/templates)")
    crd.set_defaults(func=_crd)
    for plugin in entry_points(group=PLUGIN_GROUP):  # e.g. `cpt report`, when the pipeline is installed
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
