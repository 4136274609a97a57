"""A pass writes only the status fields it changes, and a best-effort read that times out is asked again
(issue 21 review: evaluation results pushed by pods were replaced by a pass's older copy; a JobSet's failure cause
was cached empty after one failed read)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from urllib3.exceptions import ReadTimeoutError

from cpt_operator.handlers import changes
from cpt_operator.kube import Kube

PUSHED = {"milestones": [{"tokens": 1000, "scores": {"arc_easy": 0.5}}, {"tokens": 2000, "scores": {"arc_easy": 0.6}}]}


def test_a_pass_does_not_send_lists_it_did_not_change() -> None:
    cached = {"phase": "Evaluating", "evaluation": {"milestones": PUSHED["milestones"][:1]}, "conditions": []}
    wanted = {**cached, "conditions": [{"type": "Reconciling", "status": "True"}]}  # decided on the cached copy
    patch = changes(cached, wanted)
    assert patch == {"conditions": [{"type": "Reconciling", "status": "True"}]}
    server = {**cached, "evaluation": PUSHED}  # what the evaluation pod pushed meanwhile
    assert {**server, **patch}["evaluation"] == PUSHED  # a merge patch keeps it


def test_nested_changes_send_only_the_changed_fields() -> None:
    cached = {"training": {"step": 5, "exports": ["tokens-1"]}, "runningSeconds": 10}
    wanted = {"training": {"step": 5, "exports": ["tokens-1"], "restarts": 1}, "runningSeconds": 12}
    assert changes(cached, wanted) == {"training": {"restarts": 1}, "runningSeconds": 12}
    assert changes(cached, cached) == {}


class FlakyBatch:
    """The Job read of a failed JobSet's first failed Job: a timeout first (as urllib3 raises it), then the Job."""

    def __init__(self) -> None:
        self.calls = 0

    def read_namespaced_job(self, name: str, namespace: str) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ReadTimeoutError(None, "/apis/batch/v1", "Read timed out.")
        condition = SimpleNamespace(type="Failed", message="Pod train-0 exited with 137", reason="BackoffLimit")
        return SimpleNamespace(status=SimpleNamespace(conditions=[condition]))


def test_a_failure_cause_that_could_not_be_read_is_read_again() -> None:
    kube = Kube(core=None, batch=FlakyBatch(), custom=None, rbac=None)
    jobset = {
        "metadata": {"uid": "u1", "name": "r-train"},
        "status": {"conditions": [{"type": "Failed", "message": "jobset failed: first failed job: r-train-0"}]},
    }
    assert kube._failed_job_message("ns", jobset) == ""  # the timeout: no cause this pass, no exception
    assert kube._failed_job_message("ns", jobset) == "Job r-train-0: Pod train-0 exited with 137"
    assert kube._failed_job_message("ns", jobset) == "Job r-train-0: Pod train-0 exited with 137"
    assert kube.batch.calls == 2  # then cached
