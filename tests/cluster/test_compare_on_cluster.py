"""`cpt compare -l LABEL` against the real API server: the quickstart's replay sweep applied as `cpt sweep` writes
it, each run's status.evaluation patched as the evaluation Jobs push it (the same function builds it), then
listed by the sweep's label with the kubeconfig and compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from cpt.kube_yaml import dump, load_all
from cpt_pipeline.evaluate.results import status_summary
from tests.cluster.cluster import Cluster
from tests.cpt.test_cli import REPO

QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
CPT = str(Path(sys.executable).parent / "cpt")


def _summaries(general_after: float, story_after: float) -> list[dict]:
    def summary(tokens: int, domain: float, general: float, story: float) -> dict:
        scores = [
            {"task": "science_quiz", "metric": "acc", "score": 0.25 if tokens == 0 else 0.81, "stderr": 0.07},
            {"task": "story_quiz", "metric": "acc", "score": story, "stderr": 0.05},
        ]
        average = sum(s["score"] for s in scores) / 2
        perplexity = {"domain": {"perplexity": domain}, "general": {"perplexity": general}}
        return {"tokens": tokens, "scores": scores, "average": average, "perplexity": perplexity, "resultsUri": None}

    return [summary(0, 17541.6, 2.015, 1.0), summary(1_638_400, 1.21, general_after, story_after)]


def _cpt(cluster: Cluster, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = cluster.env() | ({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})
    return subprocess.run([CPT, *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def _kubeconfig(cluster: Cluster, path: Path, namespace: str, token: str | None = None) -> Path:
    """The admin kubeconfig with the context's namespace set (and a token user instead of admin's)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    if token:
        config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def _apply_run(cluster: Cluster, tmp_path: Path, namespace: str) -> None:
    """The quickstart sweep's replay-0 run in `namespace`, evaluated."""
    if not (tmp_path / "sweep").is_dir():
        args = ("sweep", str(QUICKSTART), "--set", "data.replay.fraction=0", "-o", str(tmp_path / "sweep"))
        assert _cpt(cluster, *args).returncode == 0
    cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path / "sweep"))
    patch = json.dumps({"status": {"evaluation": status_summary(_summaries(1.86, 1.0))}})
    cluster.kubectl("patch", "cpt", "quickstart-fraction-0", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", patch)  # fmt: skip


def test_compare_lists_a_sweep_by_its_label_on_the_cluster(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = crd_installed
    result = _cpt(cluster, "sweep", str(QUICKSTART), "--set", "data.replay.fraction=0,0.25", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path))
    statuses = {"quickstart-fraction-0": _summaries(187646.2, 0.81), "quickstart-fraction-0-25": _summaries(1.86, 1.0)}
    for name, summaries in statuses.items():
        patch = json.dumps({"status": {"evaluation": status_summary(summaries)}})
        cluster.kubectl("patch", "cpt", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    other = load_all((tmp_path / "quickstart-fraction-0.yaml").read_text())[0]  # another sweep's run
    other["metadata"]["name"], other["metadata"]["labels"]["cpt.kubecpt.dev/sweep"] = "unrelated", "another"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=dump(other))

    result = _cpt(cluster, "compare", "-l", "cpt.kubecpt.dev/sweep=quickstart", "-n", namespace, "--plot",
                  str(tmp_path / "frontier.svg"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:5]]
    assert [r[:5] for r in rows] == [
        ["quickstart-fraction-0", "0", "0", "0.2500", "1.0000"],
        ["quickstart-fraction-0", "0", "1,638,400", "0.8100", "0.8100"],
        ["quickstart-fraction-0-25", "0.25", "0", "0.2500", "1.0000"],
        ["quickstart-fraction-0-25", "0.25", "1,638,400", "0.8100", "1.0000"],
    ]
    assert rows[1][-4:] == ["14,497x", "lower", "93,125x", "higher"] and rows[3][-1] == "-7.7%"
    assert "unrelated" not in result.stdout and ">replay 0.25, 1.64M<" in (tmp_path / "frontier.svg").read_text()

    result = _cpt(cluster, "compare", "-l", "cpt.kubecpt.dev/sweep=nothing", "-n", namespace)
    assert result.returncode == 1 and result.stderr == (
        f"cpt compare: -l {'cpt.kubecpt.dev/sweep=nothing'}: no ContinuedPretrain with this label in namespace "
        f"{namespace}\n"
    )


def test_compare_lists_the_kubeconfig_namespace_and_names_runs_by_namespace_across_namespaces(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    """As kubectl: without -n the context's namespace (else "default"), -A every namespace; the same run name in
    two namespaces is two rows, `namespace/name`."""
    cluster, other = crd_installed, f"{namespace}-b"
    cluster.kubectl("create", "namespace", other)
    try:
        for where in (namespace, other):
            _apply_run(cluster, tmp_path, where)
        label = "cpt.kubecpt.dev/sweep=quickstart"
        mine = _kubeconfig(cluster, tmp_path / "mine.kubeconfig", namespace)

        result = _cpt(cluster, "compare", "-l", label, kubeconfig=mine)
        assert result.returncode == 0, result.stderr
        assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["quickstart-fraction-0"] * 2
        assert result.stdout.splitlines()[3] == ""  # one run, two milestones: no other namespace's run

        result = _cpt(cluster, "compare", "-l", label, "--kubeconfig", str(mine), "-A")  # KUBECONFIG: admin's
        assert result.returncode == 0, result.stderr
        rows = result.stdout.split("\n\n")[0].splitlines()[1:]  # other tests' namespaces are listed too
        names = [row.split()[0] for row in rows if row.split("/")[0] in (namespace, other)]
        assert names == [f"{namespace}/quickstart-fraction-0"] * 2 + [f"{other}/quickstart-fraction-0"] * 2

        result = _cpt(cluster, "compare", "-l", label)  # the admin kubeconfig's context has no namespace
        assert result.returncode == 1 and result.stderr == (
            f"cpt compare: -l {label}: no ContinuedPretrain with this label in namespace default\n"
        )
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_compare_with_rights_in_one_namespace_lists_it_and_a_403_names_the_missing_permission(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    """A ServiceAccount that may list runs in its namespace only (a Role, as a team's user has)."""
    cluster = crd_installed
    _apply_run(cluster, tmp_path, namespace)
    cluster.kubectl("create", "serviceaccount", "analyst", "-n", namespace)
    cluster.kubectl("create", "role", "runs-reader", "-n", namespace, "--verb=get,list",
                    "--resource=continuedpretrains.cpt.kubecpt.dev")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "analyst", "-n", namespace, "--role=runs-reader",
                    f"--serviceaccount={namespace}:analyst")  # fmt: skip
    token = cluster.kubectl("create", "token", "analyst", "-n", namespace, "--duration=1h").stdout.strip()
    analyst = _kubeconfig(cluster, tmp_path / "analyst.kubeconfig", namespace, token)
    label, who = "cpt.kubecpt.dev/sweep=quickstart", f"system:serviceaccount:{namespace}:analyst"

    result = _cpt(cluster, "compare", "-l", label, kubeconfig=analyst)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["quickstart-fraction-0", "0", "0"]

    result = _cpt(cluster, "compare", "-l", label, "-n", "default", kubeconfig=analyst)
    assert result.returncode == 1 and result.stderr == (
        f"cpt compare: -l {label}: {who} cannot list continuedpretrains in namespace default: needs `list` on "
        "continuedpretrains.cpt.kubecpt.dev there\n"
    )
    result = _cpt(cluster, "compare", "-l", label, "-A", kubeconfig=analyst)
    assert result.returncode == 1 and result.stderr == (
        f"cpt compare: -l {label}: {who} cannot list continuedpretrains in all namespaces: needs `list` on "
        "continuedpretrains.cpt.kubecpt.dev cluster-wide (a ClusterRole)\n"
    )
