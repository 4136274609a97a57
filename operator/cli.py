"""Subcommands the operator adds to the `cpt` CLI: `cpt render FILE` and `cpt operator`; and the cluster listing
of `cpt compare -l LABEL` (the kubernetes client lives on this side)."""

from __future__ import annotations

import argparse
import json
import os
import re
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


IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kube_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """A client and its default namespace, in kubectl's order: --kubeconfig, else KUBECONFIG, else
    ~/.kube/config (the context's namespace, else "default"); the pod's service account only when no kubeconfig
    exists (the pod's namespace)."""
    from kubernetes import client, config

    from cpt.compare import CompareError

    files = [kubeconfig] if kubeconfig else os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)
    if kubeconfig or any(Path(f).expanduser().is_file() for f in files if f):
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            current = next((c for c in contexts if c["name"] == context), None)
            if current is None:
                raise CompareError(f"--context {context}: no such context in the kubeconfig")
        namespace = (current or {}).get("context", {}).get("namespace") or "default"
        return config.new_client_from_config(config_file=kubeconfig, context=context), namespace
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise CompareError("no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not in a pod")
    config.load_incluster_config()
    namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.is_file() else "default"
    return client.ApiClient(), namespace


def _forbidden(error: Any, where: str) -> str:
    """A 403 as one line: who cannot list runs where, and the permission that would allow it."""
    from cpt import API_GROUP, PLURAL

    try:
        message = json.loads(error.body or "{}").get("message", "")
    except ValueError:
        message = ""
    user = re.search(r'User "([^"]+)"', message)
    scope = "cluster-wide (a ClusterRole)" if where == "all namespaces" else "there"
    return (
        f"{user.group(1) if user else 'you'} cannot list {PLURAL} in {where}: needs `list` on "
        f"{PLURAL}.{API_GROUP} {scope}"
    )


def list_runs(
    selector: str,
    namespace: str | None,
    *,
    all_namespaces: bool = False,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Where it looked ("namespace X" or "all namespaces") and every ContinuedPretrain there with this label, as
    kubectl would list them: `namespace` or the kubeconfig context's, or all; an API error is a one-line
    CompareError (a 403 names the permission missing)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from cpt import API_GROUP, API_VERSION, PLURAL
    from cpt.compare import CompareError

    where = "all namespaces"
    try:
        api_client, default_namespace = _kube_client(kubeconfig, context)
        api = client.CustomObjectsApi(api_client)
        if all_namespaces:
            found = api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL, label_selector=selector)
        else:
            where = f"namespace {namespace or default_namespace}"
            found = api.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace or default_namespace, PLURAL, label_selector=selector
            )
    except ApiException as error:
        if error.status == 403:
            raise CompareError(f"-l {selector}: {_forbidden(error, where)}") from error
        raise CompareError(f"-l {selector}: the API server answered {error.status} {error.reason}") from error
    except (config.ConfigException, HTTPError, OSError) as error:
        first_line = str(error).split("\n", 1)[0]
        raise CompareError(f"-l {selector}: cannot reach the cluster: {first_line}") from error
    items = found.get("items", [])
    return where, sorted(items, key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"]))
