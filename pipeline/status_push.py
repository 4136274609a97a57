"""Stage pods push their own progress to the ContinuedPretrain's status subresource.

Each stage applies only its own part (`preprocess`, `training`, `evaluation`, `reportUri`) with
server-side apply under its own field manager, so writers never overwrite each other and the operator
(which owns the conditions and the phase) never reads the run's storage or its credentials. The pod's
ServiceAccount token is that of the run's own ServiceAccount, whose Role allows only `get` and `patch` on
this one run's status. Plain HTTPS through urllib: the pipeline does not depend on a Kubernetes client.

A stage whose pods run concurrently and write one shared part (the evaluation Jobs, each adding its entries to
`evaluation.milestones`) pushes with `push_merged_status`: it reads the status, merges its own view into it and
applies onto exactly the version it read, so a writer that looked at storage early never takes back what a later
one pushed.

Outside a cluster (`cpt run`), or when `KUBECPT_RUN` is unset, nothing is pushed. A push that fails is
logged and the stage goes on: storage holds the authoritative files, and the next push repeats the state. (The
evaluation stage under a guardrail fails instead: the operator acts on the verdict it pushes.)
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt import API_GROUP, API_VERSION, KIND, PLURAL

log = logging.getLogger(__name__)
RUN_ENV = "KUBECPT_RUN"  # "<namespace>/<name>", set by the operator on every stage container
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _server() -> str | None:
    if os.environ.get("KUBECPT_API_SERVER"):
        return os.environ["KUBECPT_API_SERVER"]
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@dataclass(frozen=True)
class _Run:
    """Where this pod's run lives on the API server, and the credentials to reach it."""

    server: str
    namespace: str
    name: str
    token_file: Path
    ca_file: str

    def url(self, **query: str) -> str:
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}/status"
        return f"{self.server}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def request(self, method: str, url: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Authorization": f"Bearer {self.token_file.read_text().strip()}"}
        if body is not None:
            headers["Content-Type"] = "application/apply-patch+yaml"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read() or b"{}")


def _run() -> _Run | None:
    target, server = os.environ.get(RUN_ENV), _server()
    if not target or not server:
        return None
    namespace, name = target.split("/", 1)
    token_file = Path(os.environ.get("KUBECPT_TOKEN_FILE", SERVICE_ACCOUNT / "token"))
    ca_file = os.environ.get("KUBECPT_CA_FILE", str(SERVICE_ACCOUNT / "ca.crt"))
    return _Run(server, namespace, name, token_file, ca_file)


def _apply(run: _Run, field_manager: str, status: dict[str, Any], version: str | None, timeout: float) -> None:
    """Server-side apply; with `version`, only onto that resourceVersion (409 Conflict when another came between)."""
    metadata = {"name": run.name, "namespace": run.namespace}
    if version is not None:
        metadata["resourceVersion"] = version
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "status": status}
    run.request("PATCH", run.url(fieldManager=field_manager, force="true"), body, timeout)


def _log_failure(run: _Run, field_manager: str, error: Exception) -> None:
    detail = error.read().decode(errors="replace")[:300] if isinstance(error, urllib.error.HTTPError) else ""
    log.warning("status push to %s/%s failed (%s): %s %s", run.namespace, run.name, field_manager, error, detail)


def push_configured() -> bool:
    """Does this pod push to its run's status (in a cluster, `KUBECPT_RUN` set)?"""
    return _run() is not None


def read_status(timeout: float = 10) -> dict[str, Any] | None:
    """This pod's run's status as the API server has it (the report marks its recommended export and budget
    segments); None outside a pod or when it cannot be read (logged)."""
    run = _run()
    if run is None:
        return None
    try:
        return run.request("GET", run.url(), None, timeout).get("status") or {}
    except (OSError, urllib.error.URLError) as error:
        _log_failure(run, "read", error)
        return None


def push_status(field_manager: str, status: dict[str, Any], timeout: float = 10) -> bool:
    """Server-side apply `status` to this pod's run under `field_manager`; True when the server took it."""
    run = _run()
    if run is None:
        return False
    try:
        _apply(run, field_manager, status, None, timeout)
    except (OSError, urllib.error.URLError) as error:
        _log_failure(run, field_manager, error)
        return False
    return True


def push_merged_status(
    field_manager: str, merge: Callable[[dict[str, Any]], dict[str, Any]], timeout: float = 10, attempts: int = 8
) -> bool:
    """Read the run's status, then apply `merge(status)` onto exactly what was read: when another writer came
    in between (409 Conflict on the resourceVersion), read and merge again. So a writer whose own view is
    older than the status never takes back what a newer one wrote; True when the server took it."""
    run = _run()
    if run is None:
        return False
    for _ in range(attempts):
        try:
            current = run.request("GET", run.url(), None, timeout)
            _apply(
                run, field_manager, merge(current.get("status") or {}), current["metadata"]["resourceVersion"], timeout
            )
            return True
        except urllib.error.HTTPError as error:
            if error.code != 409:
                _log_failure(run, field_manager, error)
                return False
        except (OSError, urllib.error.URLError) as error:
            _log_failure(run, field_manager, error)
            return False
    log.warning(
        "status push to %s/%s (%s): still conflicting after %d reads", run.namespace, run.name, field_manager, attempts
    )
    return False
