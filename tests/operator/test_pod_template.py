"""The platform's worker pod template: loading errors name the file and key; the run's settings win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cpt.api import ContinuedPretrain
from cpt_operator import pod_template
from cpt_operator.children import training_jobset
from cpt_operator.config import OperatorConfig
from cpt_operator.pod_template import PodTemplateError
from tests.operator.test_children import resource

TEMPLATE = {
    "volumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
    "nodeSelector": {"pool": "workers", "zone": "a"},
    "tolerations": [{"key": "gpu", "operator": "Exists"}],
    "securityContext": {"runAsNonRoot": True},
    "container": {
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/ca"}],
        "env": [{"name": "SSL_CERT_DIR", "value": "/etc/ssl/ca"}, {"name": "PET_NNODES", "value": "99"}],
    },
}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("volumes: {a: 1}\n", "volumes: expected a list"),
        ("hostNetwork: true\n", "hostNetwork: not applied by the operator"),
        ("container: {command: [sh]}\n", "container.command: not applied by the operator"),
        ("- a\n- b\n", "expected a mapping, got list"),
        ("volumes: [\n", "while parsing"),
    ],
)
def test_a_bad_template_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(text)
    with pytest.raises(PodTemplateError) as error:
        pod_template.load(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_a_missing_template_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PodTemplateError, match=r"missing\.yaml"):
        pod_template.load(tmp_path / "missing.yaml")


def training_pod(run: ContinuedPretrain, config: OperatorConfig) -> dict[str, Any]:
    return training_jobset(run, config)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def test_the_template_reaches_every_stage_pod_and_the_run_settings_win(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    config = OperatorConfig(worker_pod_template=pod_template.load(path))
    run = resource(
        training={"nodes": 2, "procsPerNode": 1},
        scheduling={"nodeSelector": {"zone": "b"}},
    )
    pod, plain = (training_pod(run, c) for c in (config, OperatorConfig()))
    assert {"name": "ca", "configMap": {"name": "ca-bundle"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"pool": "workers", "zone": "b"}  # the run's own key wins
    assert {"key": "gpu", "operator": "Exists"} in pod["tolerations"] and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert {"name": "ca", "mountPath": "/etc/ssl/ca"} in container["volumeMounts"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert ("SSL_CERT_DIR", "/etc/ssl/ca") in env
    assert [value for name, value in env if name == "PET_NNODES"] == ["2"]  # not repeated, not overridden
    assert TEMPLATE["volumes"][0] in pod["volumes"]
    assert [v for v in pod["volumes"] if v != TEMPLATE["volumes"][0]] == plain["volumes"]  # the run's own kept


def test_the_platform_template_adjusts_the_restricted_security_context_key_by_key(tmp_path: Path) -> None:
    """A platform whose image runs as root (the end-to-end node's) relaxes runAsNonRoot; the rest stays."""
    path = tmp_path / "template.yaml"
    security = {
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
        "container": {"securityContext": {"readOnlyRootFilesystem": True}},
    }
    path.write_text(yaml.safe_dump(security))
    pod = training_pod(resource(), OperatorConfig(worker_pod_template=pod_template.load(path)))
    assert pod["securityContext"] == {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
