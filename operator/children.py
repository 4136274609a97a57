"""Pure builders of a run's children: the spec ConfigMap, the stage Jobs and the training JobSet.

Every container command is `cpt.stages.stage_argv` (the local runner uses the same), an argument list;
the spec reaches the pods as a ConfigMap file mounted at `cpt.stages.SPEC_PATH`, never through a shell.
Every field a defaulting webhook would fill is spelled out, so nothing depends on the webhook and GitOps
diffs stay stable. The builders return plain dicts; the handlers adopt and create them.
"""

from __future__ import annotations

import copy
import json
import posixpath
from typing import Any

from cpt import API_GROUP, API_VERSION, KIND, PLURAL
from cpt.api import ContinuedPretrain
from cpt.api.platform import SHUTDOWN_ENV
from cpt.exit_codes import EXIT_PREEMPTED, PERMANENT
from cpt.stages import SPEC_PATH, Stage, export_name, parallelism, stage_argv
from cpt_operator import pod_template as platform_template
from cpt_operator.config import OperatorConfig
from cpt_operator.names import PRIORITY_LABEL, QUEUE_LABEL, TARGET_LABEL, child_name, labels, segment_suffix
from cpt_operator.placement import CONTAINER_SECURITY, POD_SECURITY, stage_placement

RUN_ENV = "KUBECPT_RUN"  # where a stage pod pushes its status (cpt_pipeline.status_push reads it)
INCARNATION_ENV = "KUBECPT_RUN_UID"  # the run's UID: which incarnation a pod works for (preprocess/started.py)
# A stage pod that requests no GPU sees none, even from a CUDA image (NVIDIA_VISIBLE_DEVICES=all) on a GPU node
# with the nvidia runtime; the device plugin sets it for a pod that requests GPUs. Training is left alone.
NO_GPU_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
SPEC_VOLUME = "spec"
SPEC_KEY = posixpath.basename(SPEC_PATH)
TRAINER = "trainer"
REPLICATED_JOB = "node"
MASTER_PORT = 29500
# The Job controller's podFailurePolicy messages, matched by the JobSet failure rules below
PERMANENT_MESSAGE = "exit code ({}) matching FailJob rule".format("|".join(str(c) for c in PERMANENT))


def spec_configmap(resource: ContinuedPretrain) -> dict[str, Any]:
    """The resource (apiVersion, kind, name, spec) as the file every stage reads."""
    name = resource.metadata["name"]
    document = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name}}
    document["spec"] = resource.spec.to_api()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child_name(name, "spec"), "labels": labels(name)},
        "data": {SPEC_KEY: json.dumps(document, indent=1, sort_keys=True)},
    }


def status_writer_name(resource: ContinuedPretrain) -> str:
    return child_name(resource.metadata["name"], "status")


def status_writer(resource: ContinuedPretrain) -> list[dict[str, Any]]:
    """The run's own ServiceAccount and a Role that lets it `patch` this one run's status, nothing else: the
    stage pods push their progress with it (server-side apply, one field manager per stage)."""
    run = resource.metadata["name"]
    name = status_writer_name(resource)
    meta = {"name": name, "labels": labels(run)}
    account = resource.spec.scheduling.service_account_name or name  # a user's own account gets the Role too
    role_rules = [
        {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "resourceNames": [run], "verbs": ["get", "patch"]}
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": role_rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": resource.metadata.get("namespace", "default")}
            ],
        },
    ]


def _child_labels(resource: ContinuedPretrain, stage: str) -> dict[str, str]:
    out = labels(resource.metadata["name"], stage)
    scheduling = resource.spec.scheduling
    if scheduling.queue_name:
        out[QUEUE_LABEL] = scheduling.queue_name
        if scheduling.priority_class_name:
            out[PRIORITY_LABEL] = scheduling.priority_class_name
    return out


def _env(resource: ContinuedPretrain) -> list[dict[str, Any]]:
    target = f"{resource.metadata.get('namespace', 'default')}/{resource.metadata['name']}"
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": RUN_ENV, "value": target}]
    if resource.metadata.get("uid"):
        env.append({"name": INCARNATION_ENV, "value": resource.metadata["uid"]})
    secret = resource.spec.model.secret_ref
    if secret is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    return env


def pod_template(
    resource: ContinuedPretrain,
    stage: Stage,
    config: OperatorConfig,
    *,
    argv: list[str],
    container: str = "stage",
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod template running one stage: the spec file mounted, credentials as env, the stage's resources and
    placement (`placement.py`), the restricted security context."""
    spec = resource.spec
    scheduling = spec.scheduling
    placement = stage_placement(spec, stage)
    no_gpu = [NO_GPU_ENV] if stage is not Stage.TRAIN and placement.gpu is None else []
    main: dict[str, Any] = {
        "name": container,
        "image": scheduling.images.worker or config.worker_image,
        "imagePullPolicy": scheduling.images.pull_policy or config.pull_policy,
        "command": argv,
        "env": [*_env(resource), *no_gpu, *(env or [])],
        "volumeMounts": [{"name": SPEC_VOLUME, "mountPath": posixpath.dirname(SPEC_PATH), "readOnly": True}],
        "resources": placement.resources,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "terminationMessagePolicy": "FallbackToLogsOnError",  # the one-line error reaches the pod status
    }
    if spec.storage.credentials_secret is not None:
        main["envFrom"] = [{"secretRef": {"name": spec.storage.credentials_secret.name}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [main],
        "volumes": [{"name": SPEC_VOLUME, "configMap": {"name": child_name(resource.metadata["name"], "spec")}}],
        "nodeSelector": placement.node_selector,
        "tolerations": placement.tolerations,
        "securityContext": copy.deepcopy(POD_SECURITY),
    }
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    pod["serviceAccountName"] = scheduling.service_account_name or status_writer_name(resource)
    pod = platform_template.apply(pod, config.worker_pod_template)
    return {"metadata": {"labels": labels(resource.metadata["name"], str(stage))}, "spec": pod}


def _pod_failure_policy(container: str) -> dict[str, Any]:
    """Permanent exit codes fail the Job at once; preemption (exit 75, DisruptionTarget) too, so the JobSet
    rule can restart it without counting it."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": list(PERMANENT)},
            },
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": [EXIT_PREEMPTED]},
            },
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _stage_pod_failure_policy() -> dict[str, Any]:
    """Stage Jobs: permanent exit codes fail at once (no retry loop); evictions do not use up backoffLimit."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "stage", "operator": "In", "values": list(PERMANENT)},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def stage_job(
    resource: ContinuedPretrain,
    stage: Stage,
    config: OperatorConfig,
    *,
    suffix: str | None = None,
    extra: list[str] | None = None,
    segment: int = 0,
) -> dict[str, Any]:
    """A batch Job for one stage. Preprocess and dedup are Indexed (`JOB_COMPLETION_INDEX`): one pod per worker,
    one per dedup partition; the Job completes when every index has. `segment` names the Job of a segment a grown
    budget added (`<run>-preprocess-segment-01`)."""
    spec = resource.spec
    workers = spec.data.preprocessing.workers
    argv_extra = list(extra or [])
    if stage in (Stage.PREPROCESS, Stage.DEDUP):
        argv_extra += ["--world-size", str(workers)]
    pods = parallelism(spec, stage)
    indexed = stage in (Stage.PREPROCESS, Stage.DEDUP)
    # Indexed stages: each index gets its own runPolicy.backoffLimit retries (k8s >= 1.33), so transient
    # failures spread over 64 partitions do not add up; one index out of retries fails the Job at once.
    retries = (
        {"backoffLimitPerIndex": spec.run_policy.backoff_limit, "maxFailedIndexes": 0}
        if indexed
        else {"backoffLimit": spec.run_policy.backoff_limit}
    )
    job_spec: dict[str, Any] = {
        "completions": pods,
        "parallelism": pods,
        "completionMode": "Indexed" if indexed else "NonIndexed",
        **retries,
        "podFailurePolicy": _stage_pod_failure_policy(),
        "suspend": bool(spec.suspend or spec.scheduling.queue_name),
        "manualSelector": False,
        "template": pod_template(resource, stage, config, argv=stage_argv(stage, extra=argv_extra)),
    }
    name = child_name(resource.metadata["name"], suffix or segment_suffix(str(stage), segment))
    metadata: dict[str, Any] = {"name": name, "labels": _child_labels(resource, str(stage))}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def evaluation_job(resource: ContinuedPretrain, config: OperatorConfig, target: str) -> dict[str, Any]:
    """The evaluation of `baseline` (it may run while data is prepared) or of one milestone export
    (`tokens-<13 digits>`, as soon as the trainer has written it)."""
    job = stage_job(resource, Stage.EVALUATE, config, suffix=f"eval-{target}", extra=["--target", target])
    job["metadata"]["labels"][TARGET_LABEL] = target
    job["spec"]["template"]["metadata"]["labels"][TARGET_LABEL] = target
    return job


SHM_VOLUME = "dshm"


def training_jobset(resource: ContinuedPretrain, config: OperatorConfig, segment: int = 0) -> dict[str, Any]:
    """The training gang: one replicated Job of `nodes` Indexed pods running the torchrun launcher (`<run>-train`;
    `<run>-train-segment-NN` for a segment a grown budget added: it resumes from the latest checkpoint).

    Failure policy: `maxRestarts` = runPolicy.maxRestarts with BlockingRecreate (no stale rank survives a
    restart; every restart resumes from the latest checkpoint). A permanent exit code fails the JobSet at
    once; preemption and eviction restart it without counting; any other failure restarts and counts.
    """
    spec = resource.spec
    training = spec.training
    name = child_name(resource.metadata["name"], segment_suffix("train", segment))
    master = f"{name}-{REPLICATED_JOB}-0-0.{name}"  # pod 0 under the JobSet's headless Service
    env = [
        {"name": "PET_NNODES", "value": str(training.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(training.procs_per_node)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "PET_RUN_ID", "value": name},
        {"name": SHUTDOWN_ENV, "value": str(spec.run_policy.worker_shutdown_seconds)},
        *({"name": k, "value": v} for k, v in sorted(training.extra_env.items())),
        *(
            {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            for k, ref in sorted(training.secret_env.items())
        ),
    ]
    template = pod_template(resource, Stage.TRAIN, config, argv=stage_argv(Stage.TRAIN), container=TRAINER, env=env)
    # /dev/shm is 64 MiB in a container: NCCL's intra-node transport, DeepSpeed's CPU all-reduce and data loader
    # workers need more. A memory-backed emptyDir (counted against the pod's memory limit) gives them room.
    template["spec"]["volumes"].append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    template["spec"]["containers"][0]["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    # A preempted worker finishes its step, saves and uploads before it exits (75); the launcher's kill timer
    # (SHUTDOWN_ENV) ends within this grace period, so the kubelet never kills a worker mid-upload.
    template["spec"]["terminationGracePeriodSeconds"] = spec.run_policy.termination_grace_period_seconds
    job_spec: dict[str, Any] = {
        "completions": training.nodes,
        "parallelism": training.nodes,
        "completionMode": "Indexed",
        "backoffLimit": 0,
        "podFailurePolicy": _pod_failure_policy(TRAINER),
        "template": template,
    }
    jobset_spec: dict[str, Any] = {
        "suspend": bool(spec.suspend or spec.scheduling.queue_name),
        "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
        "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
        "failurePolicy": {
            "maxRestarts": spec.run_policy.max_restarts,
            "restartStrategy": "BlockingRecreate",
            "rules": [
                {
                    "name": "permanent-exit-code",
                    "action": "FailJobSet",
                    "onJobFailureReasons": ["PodFailurePolicy"],
                    "onJobFailureMessagePatterns": [PERMANENT_MESSAGE],
                },
                {
                    "name": "preemption",
                    "action": "RestartJobSetAndIgnoreMaxRestarts",
                    "onJobFailureReasons": ["PodFailurePolicy"],
                },
            ],
        },
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job_spec}}],
        "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
    }
    metadata = {"name": name, "labels": _child_labels(resource, str(Stage.TRAIN))}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": metadata, "spec": jobset_spec}


def milestone_exports(resource: ContinuedPretrain, trained_steps: int | None = None) -> list[str]:
    """The export of every milestone (and of the budget), as the trainer names them; none when
    evaluation.atMilestones is off. With `trained_steps` (status.training.totalSteps of a finished training),
    only those it reached: a budget grown during training (docs/training.md, "Extending a run") is trained
    only once its data is prepared."""
    spec = resource.spec
    if not spec.evaluation.at_milestones:
        return []
    milestones = spec.data.milestones_with_budget
    if trained_steps is not None:
        per_step = spec.training.tokens_per_step(spec.data.sequence_length)
        milestones = [m for m in milestones if m <= trained_steps * per_step]
    return [export_name(m) for m in milestones]


def every_child(resource: ContinuedPretrain, config: OperatorConfig) -> list[dict[str, Any]]:
    """Every object a run can own, in stage order (what `cpt render` prints; the handlers create each one
    when its stage is due)."""
    children = [spec_configmap(resource), *status_writer(resource)]
    if resource.spec.evaluation.baseline and resource.spec.model.uri is not None:
        children.append(evaluation_job(resource, config, "baseline"))
    children += [
        stage_job(resource, Stage.PREPROCESS, config),
        stage_job(resource, Stage.DEDUP, config),
        training_jobset(resource, config),
        *(evaluation_job(resource, config, export) for export in milestone_exports(resource)),
        stage_job(resource, Stage.REPORT, config),
    ]
    namespace = resource.metadata.get("namespace")
    if namespace:
        for child in children:
            child["metadata"]["namespace"] = namespace
    return children
