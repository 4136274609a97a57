"""Every stage that reads or writes the object store, run through the fault proxy (tests/s3proxy.py) in front
of moto with a connection reset, two 503 SlowDowns and a stalled connection on its reads and on its writes:
each stage retries and succeeds, with every fault spent. A fault that lasts ends the stage with exit code 5
and one line naming the object, and leaves nothing that looks finished (manifest, `latest`, export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpt.exit_codes import EXIT_UNAVAILABLE
from cpt.kube_yaml import dump
from cpt_pipeline.storage import S3_ATTEMPTS_ENV, S3_TIMEOUT_ENV
from tests.conftest import shared_data_dir
from tests.s3proxy import S3FaultProxy

REPO = Path(__file__).resolve().parents[2]
TOKENS_PER_STEP = 4 * 64  # 1 process x 4 rows x 64 tokens


@pytest.fixture(scope="module")
def proxy(s3_server: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_server) as running:
        yield running


@pytest.fixture(scope="module")
def run(proxy: S3FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bucket with the sources and the general perplexity set, and a 4-step spec whose storage is in it."""
    import s3fs

    tmp = tmp_path_factory.mktemp("stage-faults")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": proxy.endpoint,
        S3_TIMEOUT_ENV: "1",  # a stalled connection is given up after 1 s and retried
        S3_ATTEMPTS_ENV: "5",  # the default: one retry layer since 78a16da
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    bucket = f"stages-{uuid.uuid4().hex[:8]}"
    s3 = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": proxy.endpoint})
    s3.mkdir(bucket)
    shared = shared_data_dir()
    s3.put_file(str(shared / "corpora" / "openstax_stem.jsonl"), f"{bucket}/in/stem.jsonl")
    s3.put_file(str(shared / "corpora" / "stories260k_samples.jsonl"), f"{bucket}/in/stories.jsonl")
    spec = {
        "model": {"uri": str(shared / "models" / "stories260K")},
        "data": {
            "sources": [{"name": "stem", "uri": f"s3://{bucket}/in/stem.jsonl"}],
            "sequenceLength": 64,
            "tokenBudget": TOKENS_PER_STEP * 4,
            "milestones": [TOKENS_PER_STEP * 2],
            "decontamination": {"enabled": False},
            "preprocessing": {"workers": 1},
        },
        "training": {
            "microBatchSize": 4,
            "gradAccumulation": 1,
            "deepspeed": {"precision": "fp32", "gradientCheckpointing": False},
            "checkpoint": {"intervalSteps": 1, "keepLast": 2},
        },
        "evaluation": {
            "localTaskDir": str(shared / "benchmarks"),
            "tasks": [{"name": "arc_easy", "metric": "acc_norm", "limit": 4}],
            "perplexity": {
                "domain": {"heldOut": "0.05", "maxDocuments": 2},
                "general": {"uri": f"s3://{bucket}/in/stories.jsonl", "maxDocuments": 2},
            },
        },
        "storage": {"uri": f"s3://{bucket}/run"},
    }
    doc = {"apiVersion": "cpt.kubecpt.dev/v1alpha1", "kind": "ContinuedPretrain", "metadata": {"name": "f"}}
    (tmp / "cpt.yaml").write_text(dump({**doc, "spec": spec}))
    return {"spec": tmp / "cpt.yaml", "env": env, "s3": s3, "root": f"{bucket}/run", "tmp": tmp}


def stage(run: dict[str, Any], name: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", name, "--spec", str(run["spec"]), "--world-size", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**run["env"], **env},
    )


def arm_every_kind(proxy: S3FaultProxy, method: str, key: str) -> None:
    """A reset, two SlowDowns and a stall (far past the 1 s timeout) on the next requests matching."""
    proxy.reset(1, method=method, key=key)
    proxy.slow_down(2, method=method, key=key)
    proxy.stall(1, seconds=120, method=method, key=key)


def retried(proxy: S3FaultProxy, run: dict[str, Any], name: str, faults: list[tuple[str, str]], **env: str) -> None:
    """The stage, with every kind of fault on each (method, key pattern): it succeeds and every fault fired."""
    proxy.clear()
    fired = len(proxy.fired())
    for method, key in faults:
        arm_every_kind(proxy, method, key)
    result = stage(run, name, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    unspent = [f for f in proxy.faults if f.count]
    assert not unspent, f"{unspent} never matched; requests: {sorted({f'{m} {p}' for m, p in proxy.seen})}"
    assert len(proxy.fired()) - fired == 4 * len(faults)
    run["s3"].invalidate_cache()


def fails_naming(result: subprocess.CompletedProcess[str], stage_name: str, url: str) -> None:
    """Exit 5 and one line `<stage> failed: ...` naming the object, no traceback."""
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if f"{stage_name} failed: " in line]
    assert len(lines) == 1 and url in lines[0] and "failed after retries" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_preprocess_retries_its_reads_and_shard_writes(proxy: S3FaultProxy, run: dict[str, Any]) -> None:
    retried(proxy, run, "preprocess", [("GET", r"/in/stem\.jsonl$"), ("PUT", r"/work/preprocess/")])


def test_dedup_fails_naming_the_manifest_and_leaves_none(proxy: S3FaultProxy, run: dict[str, Any]) -> None:
    proxy.clear()
    proxy.slow_down(10_000, method="PUT", key=r"/data/domain/manifest\.json$")
    result = stage(run, "dedup")
    proxy.clear()
    fails_naming(result, "dedup", f"s3://{run['root']}/data/domain/manifest.json")
    run["s3"].invalidate_cache()
    assert not run["s3"].exists(f"{run['root']}/data/domain/manifest.json")


def test_dedup_retries_its_reads_and_manifest_write(proxy: S3FaultProxy, run: dict[str, Any]) -> None:
    retried(proxy, run, "dedup", [("GET", r"/work/preprocess/"), ("PUT", r"/data/domain/manifest\.json$")])
    manifest = json.loads(run["s3"].cat_file(f"{run['root']}/data/domain/manifest.json"))
    for shard in manifest["sources"]["stem"]["shards"]:
        assert run["s3"].exists(f"{run['root']}/data/domain/stem/{shard['path']}")


def test_train_fails_naming_an_export_file_and_publishes_neither_export_nor_latest(
    proxy: S3FaultProxy, run: dict[str, Any]
) -> None:
    proxy.clear()
    proxy.reset(10_000, method="PUT", key=r"/exports/.*/model\.safetensors$")
    result = stage(run, "train", TMPDIR=str(run["tmp"]))
    proxy.clear()
    export = f"s3://{run['root']}/exports/tokens-{TOKENS_PER_STEP * 2:013d}"
    fails_naming(result, "train", f"{export}/model.safetensors")
    s3, root = run["s3"], run["root"]
    s3.invalidate_cache()
    assert not s3.exists(f"{root}/exports/tokens-{TOKENS_PER_STEP * 2:013d}/export.json")
    assert s3.cat_file(f"{root}/checkpoints/latest").decode().strip() == "step-00000001"  # not the milestone's


def test_train_resumes_retrying_checkpoint_downloads_uploads_latest_and_exports(
    proxy: S3FaultProxy, run: dict[str, Any]
) -> None:
    scratch = run["tmp"] / "resumed"  # a fresh node folder: the checkpoint comes from the bucket
    scratch.mkdir()
    faults = [
        ("GET", r"/checkpoints/step-00000001/"),
        ("PUT", r"/checkpoints/step-\d+(-milestone)?/"),
        ("PUT", r"/checkpoints/latest$"),
        ("PUT", r"/exports/"),
    ]
    retried(proxy, run, "train", faults, TMPDIR=str(scratch))
    s3, root = run["s3"], run["root"]
    assert s3.cat_file(f"{root}/checkpoints/latest").decode().strip() == "step-00000004-milestone"
    for tokens in (TOKENS_PER_STEP * 2, TOKENS_PER_STEP * 4):
        export = f"{root}/exports/tokens-{tokens:013d}"
        assert all(s3.exists(f"{export}/{file}") for file in json.loads(s3.cat_file(f"{export}/export.json"))["files"])


def test_evaluate_retries_its_reads_and_result_writes(proxy: S3FaultProxy, run: dict[str, Any]) -> None:
    faults = [("GET", r"/exports/"), ("GET", r"/in/stories\.jsonl$"), ("PUT", r"/eval/")]
    retried(proxy, run, "evaluate", faults, CPT_CACHE=str(run["tmp"] / "cache"))
    status = json.loads(run["s3"].cat_file(f"{run['root']}/eval/status.json"))
    assert [m["tokens"] for m in status["milestones"]] == [0, TOKENS_PER_STEP * 2, TOKENS_PER_STEP * 4]


def test_report_retries_its_reads_and_writes(proxy: S3FaultProxy, run: dict[str, Any]) -> None:
    retried(proxy, run, "report", [("GET", r"/eval/"), ("PUT", r"/report/")])
    assert run["s3"].exists(f"{run['root']}/report/index.html")
