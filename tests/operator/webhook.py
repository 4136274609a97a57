"""A real validating admission webhook, served by the test on loopback over TLS: the API server calls it for each
create of the kind it is registered for, and it denies while `deny` is set, as a policy engine or a quota
webhook would."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.cluster.cluster import Cluster
from tests.cluster.pki import self_signed


class DenyingWebhook:
    """Registered for CREATE of `resource` in `namespace`; `deny` (a message) refuses, None allows."""

    def __init__(self, cluster: Cluster, namespace: str, group: str, resource: str, workdir: Path) -> None:
        self.cluster, self.namespace, self.group, self.resource = cluster, namespace, group, resource
        self.deny: str | None = "denied by the test's admission policy"
        self.calls = 0
        self.name = f"deny-{namespace}"
        self.certs = workdir / "webhook-certs"
        self_signed(self.certs, "127.0.0.1")

    def __enter__(self) -> DenyingWebhook:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook.calls += 1
                response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": webhook.deny is None}
                if webhook.deny is not None:
                    response["status"] = {"code": 403, "message": webhook.deny}
                review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
                body = json.dumps(review)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certs / "tls.crt", self.certs / "tls.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.cluster.apply(self._configuration())
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.kubectl("delete", "validatingwebhookconfiguration", self.name, check=False)
        self.server.shutdown()

    def _configuration(self) -> dict[str, Any]:
        port = self.server.server_address[1]
        bundle = base64.b64encode((self.certs / "tls.crt").read_bytes()).decode()
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [
                {
                    "name": "deny.test.kubecpt.dev",
                    "clientConfig": {"url": f"https://127.0.0.1:{port}/validate", "caBundle": bundle},
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [self.group],
                            "apiVersions": ["*"],
                            "resources": [self.resource],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
