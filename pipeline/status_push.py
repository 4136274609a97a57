"""Stage pods push their own progress to the ContinuedPretrain's status subresource.

Each stage applies only its own part (`preprocess`, `training`, `evaluation`, `reportUri`) with
server-side apply under its own field manager, so writers never overwrite each other and the operator
(which owns the conditions and the phase) never reads the run's storage or its credentials. The pod's
ServiceAccount token is that of the run's own ServiceAccount, whose Role allows only `patch` on this one
run's status. Plain HTTPS through urllib: the pipeline does not depend on a Kubernetes client.

Outside a cluster (`cpt run`), or when `KUBECPT_RUN` is unset, nothing is pushed. A push that fails is
logged and the stage goes on: storage holds the authoritative files, and the next push repeats the state.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
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


def push_status(field_manager: str, status: dict[str, Any], timeout: float = 10) -> bool:
    """Server-side apply `status` to this pod's run under `field_manager`; True when the server took it."""
    target, server = os.environ.get(RUN_ENV), _server()
    if not target or not server:
        return False
    namespace, name = target.split("/", 1)
    token_file = Path(os.environ.get("KUBECPT_TOKEN_FILE", SERVICE_ACCOUNT / "token"))
    ca_file = os.environ.get("KUBECPT_CA_FILE", str(SERVICE_ACCOUNT / "ca.crt"))
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "status": status,
    }
    query = urllib.parse.urlencode({"fieldManager": field_manager, "force": "true"})
    url = f"{server}/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status?{query}"
    try:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={
                "Content-Type": "application/apply-patch+yaml",
                "Authorization": f"Bearer {token_file.read_text().strip()}",
            },
        )
        context = ssl.create_default_context(cafile=ca_file)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return 200 <= response.status < 300
    except (OSError, urllib.error.URLError) as error:
        detail = error.read().decode(errors="replace")[:300] if isinstance(error, urllib.error.HTTPError) else ""
        log.warning("status push to %s/%s failed (%s): %s %s", namespace, name, field_manager, error, detail)
        return False
