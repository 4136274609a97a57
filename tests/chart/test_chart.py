"""The Helm chart rendered by the real helm: lint, the CRD from the one generator, restricted pod security,
least-privilege RBAC objects, and values checked by values.schema.json."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from cpt.crd import build_crd, render_helm_crd
from tests.chart.render import CHART, KUBE_VERSION, helm, template

FULLNAME = "rel-kubecpt"


def test_helm_lint_is_clean() -> None:
    result = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_the_chart_crd_is_generated_and_current() -> None:
    path = CHART / "templates" / "crd.yaml"
    assert path.read_text() == render_helm_crd(), f"{path} is stale: run `make crd`"
    crd = template()[("CustomResourceDefinition", "continuedpretrains.cpt.kubecpt.dev")]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == build_crd()["spec"]  # the same generator as manifests/crd/


def test_crds_enabled_and_keep_are_honoured() -> None:
    kept = template("--set", "crds.keep=false")[("CustomResourceDefinition", "continuedpretrains.cpt.kubecpt.dev")]
    assert "annotations" not in kept["metadata"]
    assert not [key for key in template("--set", "crds.enabled=false") if key[0] == "CustomResourceDefinition"]


def test_the_operator_runs_one_restricted_replica_with_probes() -> None:
    deployment = template()[("Deployment", FULLNAME)]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["readinessProbe"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]  # all namespaces by default
    assert container["image"] == "ghcr.io/kubecpt/operator:0.1.0"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # writable /tmp on a read-only root


def test_a_digest_pins_the_image_and_values_reach_the_operator_env() -> None:
    digest = "sha256:" + "a" * 64
    objects = template(
        "--set",
        f"image.digest={digest}",
        "--set",
        "worker.image=registry.example/worker:2",
        "--set-json",
        'worker.podTemplate={"nodeSelector": {"pool": "workers"}}',
    )
    (container,) = objects[("Deployment", FULLNAME)]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/kubecpt/operator@{digest}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBECPT_WORKER_IMAGE"] == "registry.example/worker:2"
    template_file = env["KUBECPT_WORKER_POD_TEMPLATE"]
    data = objects[("ConfigMap", f"{FULLNAME}-worker-pod-template")]["data"]
    assert yaml.safe_load(data[template_file.rsplit("/", 1)[1]]) == {"nodeSelector": {"pool": "workers"}}


def test_rbac_is_cluster_wide_by_default_and_namespaced_when_asked() -> None:
    default = template()
    binding = default[("ClusterRoleBinding", FULLNAME)]
    assert binding["roleRef"]["name"] == FULLNAME and binding["subjects"][0]["namespace"] == "ops"
    scoped = template("--set", "watchNamespace=team-a")
    assert [key[1] for key in scoped if key[0] == "ClusterRoleBinding"] == [f"{FULLNAME}-discovery"]
    assert scoped[("RoleBinding", FULLNAME)]["metadata"]["namespace"] == "team-a"
    (container,) = scoped[("Deployment", FULLNAME)]["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--namespace", "team-a"]


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_operator_role_has_no_secrets_no_wildcards_and_no_escalation() -> None:
    granted = rules(template()[("ClusterRole", FULLNAME)])
    assert not [r for r in granted if "*" in r or r[1] == "secrets" or r[2] in ("escalate", "bind", "impersonate")]
    assert not [r for r in granted if r[1] in ("deployments", "clusterroles", "clusterrolebindings")]
    edit = rules(template()[("ClusterRole", f"{FULLNAME}-edit")])
    assert ("cpt.kubecpt.dev", "continuedpretrains", "create") in edit
    assert not [r for r in edit if r[1].endswith("/status")]  # users never write status


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "replicaCount=2"], "replicaCount"),
        (["--set", "worker.podTemplate.hostNetwork=true"], "hostNetwork"),
        (["--set", "watchNamespace=Team_A"], "watchNamespace"),
        (["--set", "metrics.port=0"], "/metrics/port"),
    ],
)
def test_a_wrong_value_fails_naming_the_key(values: list[str], named: str) -> None:
    result = helm("template", "rel", str(CHART), *values, check=False)
    assert result.returncode != 0 and named in result.stderr, result.stderr


def _paths(values: Any, prefix: str = "") -> list[str]:
    if not isinstance(values, dict) or not values:
        return [prefix]
    return [p for key, value in values.items() for p in _paths(value, f"{prefix}.{key}" if prefix else key)]


def _in_schema(schema: dict[str, Any], path: str) -> bool:
    node = schema
    for key in path.split("."):
        properties = node.get("properties", {})
        if key not in properties:  # unknown: fine only in a free-form map (resources, nodeSelector, ...)
            return node.get("additionalProperties", True) is not False
        node = properties[key]
    return True


def test_every_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in _paths(values) if not _in_schema(schema, path)]
    assert not missing, f"values.yaml keys that values.schema.json does not describe: {missing}"
    result = helm("lint", str(CHART), "--set", "crds.enabled=false")
    assert result.returncode == 0


def test_service_monitor_and_network_policy_are_optional() -> None:
    assert not [k for k in template() if k[0] in ("ServiceMonitor", "NetworkPolicy")]
    objects = template("--set", "metrics.serviceMonitor.enabled=true", "--set", "networkPolicy.enabled=true")
    monitor = objects[("ServiceMonitor", FULLNAME)]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]
    assert monitor["spec"]["selector"]["matchLabels"] == objects[("Service", f"{FULLNAME}-metrics")]["spec"]["selector"]
    policy = objects[("NetworkPolicy", FULLNAME)]["spec"]
    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"][0]["ports"] == [{"port": "metrics"}]


def test_the_operator_role_grants_every_call_the_passes_make() -> None:
    """operator/kube.py and actions.py: what a pass calls, kind by kind (a missing verb is a 403 on a real cluster,
    where the tests' admin kubeconfig would not see it)."""
    granted = rules(template()[("ClusterRole", FULLNAME)])
    needed = {
        ("", "events", "list"),  # a Job's FailedCreate Events
        ("kueue.x-k8s.io", "workloads", "patch"),  # spec.active: stop a finished run, suspend under Kueue
        ("", "pods", "watch"),
        *(("", kind, verb) for kind in ("configmaps", "serviceaccounts") for verb in ("get", "watch", "delete")),
        ("", "configmaps", "patch"),  # the spec ConfigMap follows a spec edit
        *(("rbac.authorization.k8s.io", kind, v) for kind in ("roles", "rolebindings") for v in ("get", "delete")),
        ("rbac.authorization.k8s.io", "rolebindings", "patch"),  # follows scheduling.serviceAccountName
        ("cpt.kubecpt.dev", "continuedpretrains", "get"),  # a timer's pass checks the run still exists
    }
    assert needed <= granted, sorted(needed - granted)
    cluster_wide = rules(template("--set", "watchNamespace=team-a")[("ClusterRole", f"{FULLNAME}-discovery")])
    flavors = {("kueue.x-k8s.io", "resourceflavors", verb) for verb in ("get", "list", "watch")}  # status.plan's GPU
    assert flavors <= cluster_wide, sorted(flavors - cluster_wide)


def test_the_chart_refuses_a_kubernetes_older_than_1_29() -> None:
    """Chart.yaml's kubeVersion: the CRD's CEL rules and the stage Jobs' backoffLimitPerIndex are on by default from
    1.29 (docs/install.md); a vendor's build of 1.29 (a pre-release suffix) is accepted."""
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == ">=1.29.0-0"
    refused = helm("template", "rel", str(CHART), "--kube-version", "v1.28.15", check=False)
    assert refused.returncode != 0 and "incompatible with Kubernetes v1.28.15" in refused.stderr, refused.stderr
    for version in ("v1.29.0", "v1.29.3-eks-1234", "v1.35.4"):
        helm("template", "rel", str(CHART), "--kube-version", version)
