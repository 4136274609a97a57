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


def test_dedup_is_an_indexed_job_with_one_index_per_partition() -> None:
    data = minimal()["spec"]["data"]
    for preprocessing, partitions in (({"workers": 3}, 3), ({"workers": 2, "dedupPartitions": 5}, 5)):
        job = stage_job(resource(data={**data, "preprocessing": preprocessing}), Stage.DEDUP, CONFIG)["spec"]
        assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", partitions, partitions)
        command = job["template"]["spec"]["containers"][0]["command"]
        assert command == stage_argv(Stage.DEDUP, extra=["--world-size", str(preprocessing["workers"])])


def test_each_index_of_the_preprocess_and_dedup_jobs_retries_on_its_own() -> None:
    data = minimal()["spec"]["data"]
    run = resource(data={**data, "preprocessing": {"workers": 4, "dedupPartitions": 64}}, runPolicy={"backoffLimit": 3})
    for stage in (Stage.PREPROCESS, Stage.DEDUP):
        job = stage_job(run, stage, CONFIG)["spec"]
        assert (job.get("backoffLimitPerIndex"), job.get("maxFailedIndexes")) == (3, 0), stage
        assert "backoffLimit" not in job, stage  # the API server defaults it to "no limit across indexes"
    report = stage_job(run, Stage.REPORT, CONFIG)["spec"]
    assert report["backoffLimit"] == 3 and "backoffLimitPerIndex" not in report


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


def stage_pods(run: ContinuedPretrain) -> dict[str, dict[str, Any]]:
    """Each Job's or JobSet's pod spec, by child name."""
    pods = {}
    for child in every_child(run, CONFIG):
        if child["kind"] == "Job":
            pods[child["metadata"]["name"]] = child["spec"]["template"]["spec"]
        elif child["kind"] == "JobSet":
            job = child["spec"]["replicatedJobs"][0]["template"]["spec"]
            pods[child["metadata"]["name"]] = job["template"]["spec"]
    return pods


GPU_RUN = {
    "training": {"resources": {"requests": {"cpu": "16", "memory": "200Gi"}, "limits": {"nvidia.com/gpu": 8}}},
    "scheduling": {"nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]},
}


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


def test_cpu_stages_get_requests_and_a_memory_limit_and_stay_off_the_gpu_pool() -> None:
    pods = stage_pods(resource(**GPU_RUN))
    for name in ("t-preprocess", "t-dedup", "t-report"):
        pod = pods[name]
        resources = pod["containers"][0]["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys() and set(resources["limits"]) == {"memory"}, name
        assert pod["nodeSelector"] == {} and pod["tolerations"] == [], name  # the GPU placement is the gang's
        assert env_of(pod)["NVIDIA_VISIBLE_DEVICES"] == "void", name  # a CUDA image on a GPU node sees no GPU
    assert pods["t-preprocess"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }
    train = pods["t-train"]
    assert train["containers"][0]["resources"] == GPU_RUN["training"]["resources"]
    assert train["nodeSelector"] == {"gpu": "h100"} and train["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(train)


def test_evaluation_gets_one_gpu_of_the_trainings_kind_and_the_gangs_placement() -> None:
    pods = stage_pods(resource(**GPU_RUN))
    evaluations = [name for name in pods if "-eval-" in name]
    assert evaluations == ["t-eval-baseline", "t-eval-tokens-0000400000000", "t-eval-tokens-0001000000000"]
    for name in evaluations:
        pod = pods[name]
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == 1 and resources["limits"]["nvidia.com/gpu"] == 1, name
        assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"], name
        assert pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
        assert "NVIDIA_VISIBLE_DEVICES" not in env_of(pod)  # the device plugin sets it to the GPU it allocates
    amd = resource(training={"resources": {"limits": {"amd.com/gpu": 2}}})
    assert stage_pods(amd)["t-eval-baseline"]["containers"][0]["resources"]["limits"]["amd.com/gpu"] == 1


def test_without_training_gpus_evaluation_runs_on_cpu_with_no_placement() -> None:
    pod = stage_pods(resource(scheduling={"nodeSelector": {"pool": "big"}}))["t-eval-baseline"]
    resources = pod["containers"][0]["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"memory"}
    assert pod["nodeSelector"] == {} and env_of(pod)["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_a_stages_own_settings_replace_its_defaults() -> None:
    own = {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    stages = {
        "preprocess": {"resources": own, "nodeSelector": {"pool": "cpu"}, "tolerations": [{"key": "spot"}]},
        "evaluate": {"resources": own},  # no GPU asked: off the GPU pool too
        "report": {"nodeSelector": {"pool": "small"}},
    }
    pods = stage_pods(resource(training=GPU_RUN["training"], scheduling={**GPU_RUN["scheduling"], "stages": stages}))
    pre = pods["t-preprocess"]
    assert pre["containers"][0]["resources"] == own and pre["nodeSelector"] == {"pool": "cpu"}
    assert pre["tolerations"] == [{"key": "spot", "operator": "Equal"}]
    evaluation = pods["t-eval-baseline"]
    assert evaluation["containers"][0]["resources"] == own and evaluation["nodeSelector"] == {}
    assert pods["t-report"]["nodeSelector"] == {"pool": "small"}
    assert pods["t-report"]["containers"][0]["resources"]["requests"]["cpu"] == "100m"  # the default kept
    assert pods["t-dedup"]["nodeSelector"] == {}


def test_every_stage_pod_runs_with_the_restricted_security_context() -> None:
    for name, pod in stage_pods(resource(**GPU_RUN)).items():
        assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, name
        assert pod["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }, name


def test_secret_env_reaches_the_training_pods_as_secret_references_only() -> None:
    run = resource(
        training={
            "extraEnv": {"WANDB_PROJECT": "cpt"},
            "secretEnv": {
                "WANDB_API_KEY": {"name": "wandb", "key": "api-key"},
                "MLFLOW_TRACKING_TOKEN": {"name": "ml"},
            },
        }
    )
    env = env_of(stage_pods(run)["t-train"])
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["MLFLOW_TRACKING_TOKEN"] == {"secretKeyRef": {"name": "ml", "key": "token"}}
    assert env["WANDB_PROJECT"] == "cpt"
    assert "WANDB_API_KEY" not in env_of(stage_pods(run)["t-report"])  # the training pods' only


def test_training_pods_get_the_runs_grace_period_and_the_launcher_a_shutdown_time_within_it() -> None:
    """A preempted worker finishes its step, saves and uploads: the pod's grace period (not the 30 s default)
    bounds that, and the launcher's own kill timer (torchrun's shutdown timeout) ends before the kubelet's."""
    for policy, grace in (({}, 300), ({"terminationGracePeriodSeconds": 900}, 900)):
        pod = stage_pods(resource(runPolicy=policy))["t-train"]
        assert pod["terminationGracePeriodSeconds"] == grace
        assert env_of(pod)["KUBECPT_SHUTDOWN_SECONDS"] == str(grace - 10)


def test_every_stage_container_names_the_runs_incarnation() -> None:
    """A run deleted and applied again under the same name is told apart from its earlier incarnation by its UID
    (pipeline/preprocess/started.py: the old incarnation's start markers must not bind the new one)."""
    run = resource()
    run.metadata["uid"] = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    pods = [stage_job(run, stage, CONFIG)["spec"]["template"]["spec"] for stage in (Stage.PREPROCESS, Stage.DEDUP)]
    pods += [
        job["template"]["spec"]["template"]["spec"] for job in training_jobset(run, CONFIG)["spec"]["replicatedJobs"]
    ]
    for pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["KUBECPT_RUN_UID"] == "0f1e2d3c-aaaa-bbbb-cccc-000000000001", container["name"]
