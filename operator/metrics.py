"""Prometheus metrics of the operator (prometheus_client), served on `KUBECPT_METRICS_PORT` (default 8000) at
`KUBECPT_METRICS_ADDRESS` (default all interfaces, as a pod needs; the tests use 127.0.0.1).

- `kubecpt_runs{phase}`: runs this operator has seen, by phase (a custom collector over the last pass of each)
- `kubecpt_stage_duration_seconds{stage}`: from a stage's child creation to its completion
- `kubecpt_training_restarts{namespace,run}`: gang restarts of each run's training JobSet
- `kubecpt_reconcile_passes_total`, `kubecpt_reconcile_errors_total`
- `kubecpt_api_requests_total{verb}`: requests the passes made (the watches, kopf's own, are not counted),
  `kubecpt_events_posted_total`
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

STAGE_SECONDS = Histogram(
    "kubecpt_stage_duration_seconds",
    "Seconds from a stage's child creation to its completion.",
    ["stage"],
    buckets=(10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600, 7 * 24 * 3600),
)
RESTARTS = Gauge("kubecpt_training_restarts", "Gang restarts of a run's training JobSet.", ["namespace", "run"])
PASSES = Counter("kubecpt_reconcile_passes_total", "Reconcile passes.")
ERRORS = Counter("kubecpt_reconcile_errors_total", "Reconcile passes that raised.")
API_REQUESTS = Counter(
    "kubecpt_api_requests_total", "Requests the passes made to the API server (events excluded).", ["verb"]
)
EVENTS = Counter("kubecpt_events_posted_total", "Events the operator posted on runs.")


class _Phases:
    """The phase of every run from its last pass; collected as kubecpt_runs{phase}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, run: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, run)] = phase

    def forget(self, namespace: str, run: str) -> None:
        with self._lock:
            self._phases.pop((namespace, run), None)
        with contextlib.suppress(KeyError):  # a run that never trained has no series
            RESTARTS.remove(namespace, run)

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("kubecpt_runs", "Runs by phase.", labels=["phase"])
        with self._lock:
            counts = Tally(self._phases.values())
        for phase, count in sorted(counts.items()):
            family.add_metric([phase], count)
        yield family


PHASES = _Phases()
REGISTRY.register(PHASES)


def serve() -> int | None:
    """Start the metrics endpoint (once); returns its port, or None when KUBECPT_METRICS_PORT is 0."""
    port = int(os.environ.get("KUBECPT_METRICS_PORT", "8000"))
    if port:
        start_http_server(port, addr=os.environ.get("KUBECPT_METRICS_ADDRESS", "0.0.0.0"))
    return port or None
