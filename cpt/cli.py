"""The `cpt` command line: validate resources, plan a run, expand sweeps and print the CRD."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from cpt.compare import CompareError, Run, load_run, pareto, points, render, run_from_resource
from cpt.crd import render_crd, render_helm_crd
from cpt.kube_yaml import dump
from cpt.plan import run_plan
from cpt.plan_output import as_json, render_text
from cpt.sweep import SweepError, expand, parse_setting
from cpt.validation import load_documents, validate_file

# Packages that add subcommands register `add(subparsers)` under this entry-point group, so this module never
# imports them (the operator image has no pipeline, and so no `cpt report`). The operator's plugin also gives
# `compare` its cluster listing (`list_runs(selector, namespace, ...)`, the kubernetes client), which `cpt`
# itself never imports.
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


def _sweep(args: argparse.Namespace) -> int:
    try:
        documents = load_documents(Path(args.file))
        if len(documents) != 1:
            raise SweepError(f"{args.file}: expected one ContinuedPretrain, found {len(documents)} documents")
        runs = expand(documents[0][1], [parse_setting(text) for text in args.set])
    except (SweepError, ValueError) as error:
        print(f"cpt sweep: {error}", file=sys.stderr)
        return 1
    if args.output:
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        for run in runs:
            (folder / f"{run['metadata']['name']}.yaml").write_text(dump(run), encoding="utf-8")
        print(f"{len(runs)} runs written to {folder}", file=sys.stderr)
    else:
        sys.stdout.write("---\n".join(dump(run) for run in runs))
    return 0


def _compare_runs(args: argparse.Namespace) -> list[Run]:
    runs = [load_run(arg) for arg in args.runs]
    if args.selector:
        list_runs = getattr(args, "list_runs", None)
        if list_runs is None:
            raise CompareError(
                "-l: listing runs on a cluster needs the kubernetes client: pip install 'kubecpt[operator]'"
            )
        where, resources = list_runs(
            args.selector, args.namespace, all_namespaces=args.all_namespaces, kubeconfig=args.kubeconfig,
            context=args.context,
        )  # fmt: skip
        if not resources:
            raise CompareError(f"-l {args.selector}: no ContinuedPretrain with this label in {where}")
        runs += [run_from_resource(resource, qualified=args.all_namespaces) for resource in resources]
    if not runs:
        raise CompareError("name runs (YAML files or storage folders) or a label with -l")
    return runs


def _compare(args: argparse.Namespace) -> int:
    try:
        runs = _compare_runs(args)
        if args.plot:
            from cpt.frontier_plot import draw

            found = points(runs)
            draw(found, pareto(found), Path(args.plot))
    except (CompareError, ValueError) as error:
        print(f"cpt compare: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(render(runs))
    if args.plot:
        print(f"frontier drawn: {args.plot}", file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace) -> int:
    resources, problems = validate_file(Path(args.file))
    if not problems and len(resources) != 1:
        problems = [f"{args.file}: expected one ContinuedPretrain, found {len(resources)} documents"]
    if args.price_per_gpu_hour is not None and args.price_per_gpu_hour < 0:
        problems = [f"--price-per-gpu-hour: {args.price_per_gpu_hour} is negative"]
    try:
        plan = None if problems else run_plan(resources[0].spec, True, args.gpu, args.price_per_gpu_hour)
    except ValueError as error:  # an unknown --gpu
        problems = [f"--gpu: {error}"]
    if problems or plan is None:
        for problem in problems:
            print(f"cpt plan: {problem}", file=sys.stderr)
        return 1
    if args.output == "json":
        sys.stdout.write(json.dumps(as_json(plan), indent=2) + "\n")
    else:
        title = f"{resources[0].metadata.get('name', '<unnamed>')} ({args.file})"
        sys.stdout.write(render_text(resources[0].spec, plan, title, args.price_per_gpu_hour))
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
    sweep = sub.add_parser("sweep", help="one ContinuedPretrain per combination of --set values")
    sweep.add_argument("file", metavar="FILE", help="the base ContinuedPretrain")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=V1,V2",
        required=True,
        help="a field under spec and its values, e.g. data.replay.fraction=0,0.05,0.25 (repeatable)",
    )
    sweep.add_argument("-o", "--output", help="write one FILE per run into this folder instead of stdout")
    sweep.set_defaults(func=_sweep)
    compare = sub.add_parser("compare", help="several runs' evaluations in one table, and the forgetting frontier")
    compare.add_argument("runs", nargs="*", metavar="RUN", help="a run's ContinuedPretrain YAML or storage folder")
    compare.add_argument(
        "-l",
        "--selector",
        help="also every ContinuedPretrain with this label on the cluster (kubeconfig), e.g. cpt.kubecpt.dev/sweep=qs",
    )
    where = compare.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="with -l: this namespace (default: the kubeconfig context's)")
    where.add_argument(
        "-A", "--all-namespaces", action="store_true", help="with -l: every namespace (runs named namespace/name)"
    )
    compare.add_argument("--kubeconfig", help="with -l: this kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
    compare.add_argument("--context", help="with -l: this kubeconfig context (default: the current one)")
    compare.add_argument("--plot", metavar="FILE", help="draw the frontier into FILE (.png, .svg or .pdf)")
    compare.set_defaults(func=_compare)
    plan = sub.add_parser("plan", help="steps, memory per device and time per GPU type of a run, before anything runs")
    plan.add_argument("file", metavar="FILE", help="a ContinuedPretrain")
    plan.add_argument(
        "--gpu",
        action="append",
        metavar="TYPE",
        help="a GPU type of cpt/throughput.yaml, e.g. A100-80GB (repeatable; default: every type in the table)",
    )
    plan.add_argument("--price-per-gpu-hour", type=float, metavar="USD", help="show the cost at this price")
    plan.add_argument("-o", "--output", choices=["text", "json"], default="text")
    plan.set_defaults(func=_plan)
    for plugin in entry_points(group=PLUGIN_GROUP):  # e.g. `cpt report`, when the pipeline is installed
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
