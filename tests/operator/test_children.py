"""The children the operator builds: commands from cpt/stages.py, the spec as a file, the training gang."""

from __future__ import annotations

import json
from typing import Any

from cpt.api import ContinuedPretrain
from cpt.exit_codes import EXIT_PREEMPTED, PERMANENT
from cpt.stages import SPEC_PATH, Stage, stage_argv
from cpt.validation import validate_object
from cpt_operator.children import (
    PERMANENT_MESSAGE,
    QUEUE_LABEL,
    every_child,
    spec_configmap,
    stage_job,
    status_writer,
    training_jobset,
)
from cpt_operator.config import OperatorConfig
from cpt_operator.names import RUN_LABEL, STAGE_LABEL, child_name
from tests.cpt.test_spec import minimal

CONFIG = OperatorConfig(worker_image="registry.example/worker:1")


def resource(**spec: Any) -> ContinuedPretrain:
    doc = minimal()
    doc["metadata"]["namespace"] = "team-a"
    doc["spec"].update(spec)
    return ContinuedPretrain.model_validate(doc)


def test_the_spec_reaches_pods_as_a_file_that_validates() -> None:
    configmap = spec_configmap(resource())
    document = json.loads(configmap["data"]["spec.json"])
    parsed, problems = validate_object(document, "spec.json")
    assert not problems and parsed is not None and parsed.spec == resource().spec
    job = stage_job(resource(), Stage.DEDUP, CONFIG)
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "spec", "configMap": {"name": "t-spec"}}]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] + "/spec.json" == SPEC_PATH


def test_stage_commands_are_the_shared_argument_lists() -> None:
    run = resource()
    workers = run.spec.data.preprocessing.workers
    pre = stage_job(run, Stage.PREPROCESS, CONFIG)
    assert pre["spec"]["template"]["spec"]["containers"][0]["command"] == stage_argv(
        Stage.PREPROCESS, extra=["--world-size", str(workers)]
    )
    assert (pre["spec"]["completionMode"], pre["spec"]["completions"], pre["spec"]["parallelism"]) == (
        "Indexed",
        workers,
        workers,
    )
    rules = pre["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == list(PERMANENT)
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert pre["metadata"]["labels"][RUN_LABEL] == "t" and pre["metadata"]["labels"][STAGE_LABEL] == "preprocess"
    assert pre["spec"]["template"]["metadata"]["labels"][RUN_LABEL] == "t"  # pods link back to the run too


def test_the_training_gang_is_a_jobset_with_torchrun_environment_and_failure_rules() -> None:
    run = resource(
        training={
            "nodes": 3,
            "procsPerNode": 8,
            "resources": {"limits": {"nvidia.com/gpu": 8}},
            "extraEnv": {"NCCL_DEBUG": "INFO"},
        },
        scheduling={"nodeSelector": {"gpu": "h100"}, "priorityClassName": "high", "tolerations": [{"key": "gpu"}]},
        runPolicy={"maxRestarts": 4},
    )
    jobset = training_jobset(run, CONFIG)
    name = child_name("t", "train")
    spec = jobset["spec"]
    assert spec["network"] == {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True}
    assert spec["failurePolicy"]["maxRestarts"] == 4 and spec["failurePolicy"]["restartStrategy"] == "BlockingRecreate"
    permanent, preemption = spec["failurePolicy"]["rules"]
    assert permanent["action"] == "FailJobSet" and permanent["onJobFailureMessagePatterns"] == [PERMANENT_MESSAGE]
    assert preemption["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    (replicated,) = spec["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert (job["completions"], job["parallelism"], job["completionMode"], job["backoffLimit"]) == (3, 3, "Indexed", 0)
    codes = [r["onExitCodes"]["values"] for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert codes == [list(PERMANENT), [EXIT_PREEMPTED]]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "8" and env["PET_MASTER_PORT"] == "29500"
    assert env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}" and env["NCCL_DEBUG"] == "INFO"
    assert env["PET_RUN_ID"] == name  # every pod of the gang names the same rendezvous
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert {"name": shm["name"], "emptyDir": {"medium": "Memory"}} in pod["volumes"]  # not the runtime's 64 MiB
    assert "job-completion-index" in env["PET_NODE_RANK"]["fieldRef"]["fieldPath"]
    assert container["command"] == stage_argv(Stage.TRAIN) and container["image"] == "registry.example/worker:1"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 8}}
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Equal"}]
    assert pod["restartPolicy"] == "Never"


def test_permanent_exit_codes_match_the_job_controllers_message() -> None:
    import re

    message = "Container trainer for pod ns/t-train-node-0-0-x failed with exit code 4 matching FailJob rule at index 0"
    assert re.search(PERMANENT_MESSAGE, message)
    preempted = message.replace("exit code 4", f"exit code {EXIT_PREEMPTED}")
    assert not re.search(PERMANENT_MESSAGE, preempted)


def test_a_queue_name_labels_every_child_and_creates_it_suspended() -> None:
    run = resource(scheduling={"queueName": "gpu-queue", "priorityClassName": "low"})
    for child in every_child(run, CONFIG)[4:]:
        assert child["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue", child["metadata"]["name"]
        assert child["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
        assert child["spec"]["suspend"] is True
        assert child["metadata"]["namespace"] == "team-a"


def test_the_runs_service_account_may_patch_only_this_runs_status() -> None:
    account, role, binding = status_writer(resource())
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "t-status"
    assert role["rules"] == [
        {
            "apiGroups": ["cpt.kubecpt.dev"],
            "resources": ["continuedpretrains/status"],
            "resourceNames": ["t"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "t-status", "namespace": "team-a"}]
    pod = stage_job(resource(), Stage.DEDUP, CONFIG)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["serviceAccountName"] == "t-status" and env["KUBECPT_RUN"] == "team-a/t"
    own = status_writer(resource(scheduling={"serviceAccountName": "trainer-irsa"}))[2]
    assert own["subjects"][0]["name"] == "trainer-irsa"  # a user's own account gets the same narrow Role


def test_names_are_deterministic_and_short_enough() -> None:
    assert child_name("t", "train") == "t-train"
    long = child_name("r" * 63, "eval-milestones")
    assert len(long) <= 52 and long.endswith("-eval-milestones") and long == child_name("r" * 63, "eval-milestones")
    names = [c["metadata"]["name"] for c in every_child(resource(), CONFIG)]
    assert names == [
        "t-spec",
        *["t-status"] * 3,  # the run's ServiceAccount, its Role and RoleBinding
        "t-eval-baseline",
        "t-preprocess",
        "t-dedup",
        "t-train",
        "t-eval-tokens-0000400000000",
        "t-eval-tokens-0001000000000",
        "t-report",
    ]
