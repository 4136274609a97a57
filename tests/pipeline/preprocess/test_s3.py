"""The whole preprocessing path through a real S3-compatible server (moto, server mode, loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from cpt.kube_yaml import dump
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, write_jsonl

REPO = Path(__file__).resolve().parents[3]


def test_sources_and_outputs_on_s3_match_a_local_run(tmp_path: Path, s3, s3_server: str) -> None:
    bucket = f"cpt-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    docs = [document(i, lines=10) for i in range(150)] + [document(3, lines=10)]  # one duplicate
    local = write_jsonl(tmp_path / "in" / "corpus.jsonl", docs)
    s3.put_file(str(local), f"{bucket}/in/corpus.jsonl")

    held = {"perplexity": {"domain": {"heldOut": "0.1"}}}
    remote_spec = make_spec(f"s3://{bucket}/run", [{"name": "c", "uri": f"s3://{bucket}/in/*.jsonl"}], held)
    remote_spec.storage.endpoint = s3_server
    storage = Storage.from_spec(remote_spec.storage)
    assert not storage.is_local
    for rank in range(3):
        prepare(remote_spec, storage, rank, 3)
    summary = reduce(remote_spec, storage, 3, shard_rows=40)
    assert summary["duplicates"] == 1 and summary["docsKept"] + summary["heldOut"] == 150 and summary["heldOut"]

    local_spec = make_spec(tmp_path / "out", [{"name": "c", "uri": str(local)}], held)
    local_storage = Storage.from_spec(local_spec.storage)
    for rank in range(3):
        prepare(local_spec, local_storage, rank, 3)
    reduce(local_spec, local_storage, 3, shard_rows=40)

    manifest = storage.read_json("data", "domain", "manifest.json")
    shards = manifest["sources"]["c"]["shards"]
    assert len(shards) > 1
    for shard in shards:
        key = f"{bucket}/run/data/domain/c/{shard['path']}"
        assert s3.cat_file(key) == local_storage.read_bytes("data", "domain", "c", shard["path"])
    row = manifest["seq_len"] * 2  # uint16: one row is seq_len * 2 bytes; a range read fetches exactly one row
    second_row = s3.cat_file(f"{bucket}/run/data/domain/c/{shards[0]['path']}", start=row, end=2 * row)
    assert second_row == local_storage.read_bytes("data", "domain", "c", shards[0]["path"])[row : 2 * row]
    assert storage.read_json("data", "preprocess-status.json") == summary
    held_out = s3.cat_file(f"{bucket}/run/data/heldout/domain.jsonl")  # what evaluation scores, in the bucket
    assert held_out == local_storage.read_bytes("data", "heldout", "domain.jsonl") and held_out.count(b"\n") > 0


def test_the_storage_endpoint_applies_to_every_s3_uri_and_task_data_on_s3_decontaminates(
    tmp_path: Path, s3, s3_server: str, shared_data: Path
) -> None:
    """Sources and evaluation.localTaskDir on S3, reached through spec.storage.endpoint alone: the environment
    names a wrong endpoint (a closed loopback port), so only the spec's can work."""
    bucket = f"cpt-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    lines = (shared_data / "benchmarks" / "arc_easy" / "validation.jsonl").read_text().splitlines()
    item = next(i for i in map(json.loads, lines) if len(i["question"].split()) >= 15)
    leaked = document(1) + "\n" + item["question"] + " " + " ".join(item["choices"]["text"])
    s3.put_file(str(write_jsonl(tmp_path / "in.jsonl", [document(0), leaked, document(2)])), f"{bucket}/in/a.jsonl")
    evaluated = shared_data / "benchmarks" / "arc_easy" / "validation.jsonl"  # the split lm-eval scores
    s3.put_file(str(evaluated), f"{bucket}/tasks/arc_easy/validation.jsonl")
    spec = make_spec(
        f"s3://{bucket}/run",
        [{"name": "c", "uri": f"s3://{bucket}/in/*.jsonl"}],
        decontamination={"enabled": True},
    )
    doc = {"apiVersion": "cpt.kubecpt.dev/v1alpha1", "kind": "ContinuedPretrain", "metadata": {"name": "t"}}
    spec_api = spec.to_api()
    spec_api["storage"]["endpoint"] = s3_server
    spec_api["evaluation"] = {"localTaskDir": f"s3://{bucket}/tasks"}
    path = tmp_path / "cpt.yaml"
    path.write_text(dump({**doc, "spec": spec_api}))
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "CPT_CACHE": str(tmp_path / "cache")}
    for stage in ("preprocess", "dedup"):
        result = subprocess.run(
            [sys.executable, "-P", "-m", "cpt_pipeline", stage, "--spec", str(path), "--world-size", "1"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(s3.cat_file(f"{bucket}/run/data/preprocess-status.json"))
    assert summary["contaminated"] == 1 and summary["docsKept"] == 2
    manifest = json.loads(s3.cat_file(f"{bucket}/run/data/domain/manifest.json"))
    assert "from 1 files" in manifest["decontamination"]
