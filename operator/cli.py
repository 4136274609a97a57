"""Subcommands the operator adds to the `cpt` CLI: `cpt render FILE` and `cpt operator`; and the cluster listing
of `cpt compare -l LABEL` (the kubernetes client lives on this side)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


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
    compare = subparsers.choices.get("compare")
    if compare is not None:  # `cpt compare -l LABEL` lists runs with this package's kubernetes client
        compare.set_defaults(list_runs=list_runs)


def list_runs(selector: str, namespace: str | None) -> list[dict[str, Any]]:
    """Every ContinuedPretrain with this label (in one namespace, or all), read with the kubeconfig (in-cluster
    config first); an API error is a one-line CompareError."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from cpt import API_GROUP, API_VERSION, PLURAL
    from cpt.compare import CompareError

    try:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
        if namespace:
            found = api.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, label_selector=selector
            )
        else:
            found = api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL, label_selector=selector)
    except ApiException as error:
        raise CompareError(f"-l {selector}: the API server answered {error.status} {error.reason}") from error
    except (config.ConfigException, HTTPError, OSError) as error:
        first_line = str(error).split("\n", 1)[0]
        raise CompareError(f"-l {selector}: cannot reach the cluster: {first_line}") from error
    return sorted(found.get("items", []), key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"]))
