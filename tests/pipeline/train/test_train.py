"""Training on CPU with real DeepSpeed ZeRO-3 (2 processes, gloo): learning, exact resume, exports, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cpt.api import ContinuedPretrain
from cpt.api.status import TrainingStatus
from cpt.kube_yaml import dump
from cpt_pipeline.local import run_preprocessing
from cpt_pipeline.train.exit_codes import EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_PREEMPTED
from cpt_pipeline.train.faults import EXIT_AFTER_STEPS as FAULT_EXIT_AFTER_STEPS
from cpt_pipeline.train.faults import EXIT_BEFORE_EXPORT as FAULT_EXIT_BEFORE_EXPORT
from cpt_pipeline.train.faults import INF_GRADIENT, NAN_IN_FORWARD
from cpt_pipeline.train.faults import NAN_AT_STEP as FAULT_NAN_AT_STEP
from cpt_pipeline.train.loop import LOG_SAMPLE_IDS
from cpt_pipeline.train.resume import ZERO_KEY
from tests.conftest import shared_data_dir

REPO = Path(__file__).resolve().parents[3]
STEPS = 12  # tokens per step: 2 processes x 4 rows x 64 tokens = 512


def resource(storage: str, **training: Any) -> dict[str, Any]:
    shared = shared_data_dir()
    spec_training = {
        "procsPerNode": 2,
        "microBatchSize": 4,
        "gradAccumulation": 1,
        "deepspeed": {"zeroStage": 3, "precision": "fp32", "gradientCheckpointing": False},
        "optimizer": {"lr": "2e-3"},
        "checkpoint": {"intervalSteps": 3, "keepLast": 2},
        "logIntervalSteps": 2,
        **training,
    }
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"uri": str(shared / "models" / "stories260K")},
            "data": {
                "sources": [{"name": "stem", "uri": str(shared / "corpora" / "openstax_stem.jsonl")}],
                "replay": {
                    "source": {"name": "stories", "uri": str(shared / "corpora" / "stories260k_samples.jsonl")},
                    "fraction": "0.25",
                },
                "sequenceLength": 64,
                "tokenBudget": 512 * STEPS,
                "milestones": [512 * 6],
                "decontamination": {"enabled": False},
                "preprocessing": {"workers": 2},
            },
            "training": spec_training,
            "storage": {"uri": storage},
        },
    }


def write(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(dump(doc))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards prepared once (domain: OpenStax, replay: stories); each test copies them into its own storage."""
    root = tmp_path_factory.mktemp("prepared")
    spec = write(resource(str(root / "out")), root / "cpt.yaml")
    run_preprocessing(spec, 2, cwd=REPO)
    return root / "out" / "data"


def run_dir(tmp_path: Path, prepared: Path, **training: Any) -> tuple[Path, Path]:
    shutil.copytree(prepared, tmp_path / "out" / "data")
    return write(resource(str(tmp_path / "out"), **training), tmp_path / "cpt.yaml"), tmp_path / "out"


def train(spec: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "DS_ACCELERATOR": "cpu", **(env or {})},
    )


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_milestones_are_exported(tmp_path: Path, prepared: Path) -> None:
    spec, out = run_dir(
        tmp_path,
        prepared,
        checkpoint={"intervalSteps": 3, "keepLast": 1},
        schedule={"warmupFraction": "0.25", "minLrRatio": "0.1"},
    )
    result = train(spec)
    assert result.returncode == 0, result.stderr[-3000:]
    history = metrics(out)
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    # each row carries the rate its step trained with: warmup 1/3, 2/3, peak; the last step at minLrRatio
    assert [r["lr"] for r in history[:3]] == pytest.approx([2e-3 / 3, 2e-3 * 2 / 3, 2e-3])
    assert history[-1]["lr"] == pytest.approx(2e-4)
    assert json.loads((out / "exports" / "tokens-0000000003072" / "export.json").read_text())["tokens"] == 3072
    first, last = history[:3], history[-3:]
    assert sum(r["loss"] for r in last) / 3 < sum(r["loss"] for r in first) / 3 - 0.1  # it learns the domain
    assert sorted(os.listdir(out / "exports")) == ["tokens-0000000003072", "tokens-0000000006144"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = out / "exports" / "tokens-0000000006144"
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert model.config.vocab_size == 512 and tokenizer("Once upon a time").input_ids
    checkpoints = sorted(os.listdir(out / "checkpoints"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000012-milestone"
    periodic = [c for c in checkpoints if c.startswith("step-") and not c.endswith("milestone")]
    assert periodic == ["step-00000009"]  # keepLast 1: step 3 was purged, milestones are kept
    assert {"step-00000006-milestone", "step-00000012-milestone"} <= set(checkpoints)
    progress = json.loads((out / "train" / "progress.json").read_text())
    TrainingStatus.model_validate(progress)  # the operator copies this file into status.training as it is
    assert (progress["step"], progress["tokensSeen"], progress["totalSteps"]) == (STEPS, 512 * STEPS, STEPS)
    assert progress["tokensPerSecond"] > 0 and progress["latestCheckpoint"].endswith("step-00000012-milestone")
    assert progress["exports"] == ["tokens-0000000003072", "tokens-0000000006144"]  # the operator evaluates each
    assert progress["zeroStage"] == 3  # as the spec says
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "train" / "tensorboard"))


def test_a_killed_run_resumes_exactly(tmp_path: Path, prepared: Path) -> None:
    reference_spec, reference_out = run_dir(tmp_path / "reference", prepared)
    assert train(reference_spec, {LOG_SAMPLE_IDS: "1"}).returncode == 0
    spec, out = run_dir(tmp_path / "killed", prepared)
    killed = train(spec, {LOG_SAMPLE_IDS: "1", FAULT_EXIT_AFTER_STEPS: "8"})
    assert killed.returncode != 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000006-milestone"
    changed = write(resource(str(out), microBatchSize=2, gradAccumulation=2), tmp_path / "changed.yaml")
    refused = train(changed)  # same tokens per step, but other samples per step: must not resume
    assert refused.returncode == EXIT_BAD_INPUT, refused.stderr[-3000:]
    assert "spec.training.microBatchSize was 4, is 2" in refused.stdout
    assert "spec.training.gradAccumulation was 1, is 2" in refused.stdout
    resumed = train(spec, {LOG_SAMPLE_IDS: "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = metrics(reference_out), metrics(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for want, have in zip(expected, got, strict=True):
        assert have["sampleIds"] == want["sampleIds"], have["step"]
        assert abs(have["loss"] - want["loss"]) <= 1e-5, (have["step"], have["loss"], want["loss"])
        assert have["lr"] == pytest.approx(want["lr"], rel=1e-9)
    assert json.loads((out / "train" / "progress.json").read_text())["restarts"] == 1
    assert len(set(got[0]["sampleIds"])) == 8  # 2 ranks x 4 rows: disjoint samples
    assert sum(i.startswith("replay/") for r in got for i in r["sampleIds"]) == STEPS * 8 // 4  # 25% replay


@pytest.mark.parametrize("step", [6, STEPS])
def test_a_crash_between_a_milestone_checkpoint_and_its_export_loses_no_milestone(
    tmp_path: Path, prepared: Path, step: int
) -> None:
    """Killed after the milestone's checkpoint but before its export (mid-run, and at the last step): the
    restart trains the milestone again and exports it; no run completes without every milestone's export."""
    spec, out = run_dir(tmp_path, prepared)
    killed = train(spec, {FAULT_EXIT_BEFORE_EXPORT: str(step)})
    assert killed.returncode != 0
    assert not (out / "train" / "complete.json").exists()
    resumed = train(spec)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    exports = ["tokens-0000000003072", "tokens-0000000006144"]
    assert sorted(os.listdir(out / "exports")) == exports
    for name in exports:
        assert json.loads((out / "exports" / name / "export.json").read_text())["files"], name
    assert json.loads((out / "train" / "complete.json").read_text())["exports"] == exports
    assert json.loads((out / "train" / "progress.json").read_text())["exports"] == exports


def test_zero_stage_auto_picks_0_for_a_tiny_model_and_records_it(tmp_path: Path, prepared: Path) -> None:
    spec, out = run_dir(
        tmp_path,
        prepared,
        procsPerNode=1,
        microBatchSize=8,
        deepspeed={"zeroStage": "auto", "precision": "fp32", "gradientCheckpointing": False},
    )
    result = train(spec)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zeroStage auto: stage 0, estimated" in result.stderr
    assert json.loads((out / "train" / "progress.json").read_text())["zeroStage"] == 0
    plan = json.loads((out / "checkpoints" / "step-00000012-milestone" / "plan.json").read_text())
    assert plan[ZERO_KEY] == 0
    saved = os.listdir(out / "checkpoints" / "step-00000012-milestone")
    assert "mp_rank_00_model_states.pt" in saved and not any("zero_pp_rank" in name for name in saved), saved


def test_zero_stage_auto_keeps_the_stage_of_the_checkpoint_it_resumes() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from cpt_pipeline.train.loop import _zero_stage

    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64)
    )
    doc = resource("/tmp/unused", deepspeed={"zeroStage": "auto"})
    spec = ContinuedPretrain.model_validate(doc).spec
    assert _zero_stage(spec, model, "fp32", 2, "cpu", 0, None) == 0  # a fresh start: the lowest that fits
    assert _zero_stage(spec, model, "fp32", 2, "cpu", 0, {ZERO_KEY: 3}) == 3  # a resume: the checkpoint's
    explicit = ContinuedPretrain.model_validate(resource("/tmp/unused", deepspeed={"zeroStage": 2})).spec
    assert _zero_stage(explicit, model, "fp32", 2, "cpu", 0, {ZERO_KEY: 3}) == 2  # the resume check refuses it


def test_two_processes_checkpoint_to_s3_and_resume_from_the_bucket_alone(
    tmp_path: Path, prepared: Path, s3, s3_server: str
) -> None:
    """ZeRO-3, procsPerNode 2: both ranks' partitions reach the bucket, and a run killed mid-way resumes in a
    fresh scratch folder from the bucket only, with the uninterrupted run's losses."""
    reference_spec, reference_out = run_dir(tmp_path / "reference", prepared)
    assert train(reference_spec).returncode == 0
    bucket = f"cpt-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    s3.put(str(prepared) + "/", f"{bucket}/run/data/", recursive=True)
    doc = resource(f"s3://{bucket}/run")
    doc["spec"]["storage"]["endpoint"] = s3_server
    spec = write(doc, tmp_path / "cpt.yaml")
    scratch = {name: tmp_path / f"scratch-{name}" for name in ("killed", "resumed")}
    for folder in scratch.values():
        folder.mkdir()
    killed = train(spec, {FAULT_EXIT_AFTER_STEPS: "8", "TMPDIR": str(scratch["killed"])})
    assert killed.returncode != 0
    assert s3.cat_file(f"{bucket}/run/checkpoints/latest").decode().strip() == "step-00000006-milestone"
    saved = {path.rsplit("/", 1)[1] for path in s3.find(f"{bucket}/run/checkpoints/step-00000006-milestone")}
    for rank in (0, 1):
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in saved, saved
        assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in saved, saved
    result = train(spec, {"TMPDIR": str(scratch["resumed"])})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint step-00000006-milestone" in result.stderr
    got = [json.loads(line) for line in s3.cat_file(f"{bucket}/run/train/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for want, have in zip(metrics(reference_out), got, strict=True):
        assert abs(have["loss"] - want["loss"]) <= 1e-5, (have["step"], have["loss"], want["loss"])
    assert not list(scratch["resumed"].glob("kubecpt-train-*"))  # the node folder is removed at the end
    assert s3.cat_file(f"{bucket}/run/checkpoints/latest").decode().strip() == "step-00000012-milestone"
    assert s3.ls(f"{bucket}/run/checkpoints/step-00000006-milestone")
    local = tmp_path / "export"
    s3.get(f"{bucket}/run/exports/tokens-0000000006144/", str(local) + "/", recursive=True)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 5
    assert json.loads(s3.cat_file(f"{bucket}/run/train/progress.json"))["step"] == STEPS


def test_missing_shards_and_vocab_mismatch_stop_before_training(tmp_path: Path, prepared: Path) -> None:
    spec, out = run_dir(tmp_path / "missing", prepared)
    for shard in (out / "data" / "domain" / "stem").glob("shard-*.bin"):
        shard.unlink()
    result = train(spec)
    assert result.returncode == EXIT_BAD_INPUT
    assert "shards listed in the manifest are missing" in result.stdout + result.stderr
    spec, out = run_dir(tmp_path / "vocab", prepared)
    doc = resource(str(out))
    doc["spec"]["model"] = {
        "architecture": {"preset": "tiny", "vocabSize": 256},
        "tokenizer": doc["spec"]["model"]["uri"],
    }
    result = train(write(doc, tmp_path / "vocab.yaml"))
    assert result.returncode == EXIT_BAD_INPUT
    assert "tokenizer/vocab mismatch: the shards use a 512-token vocabulary" in result.stdout + result.stderr
    assert not (out / "checkpoints").exists()


def test_non_finite_loss_stops_or_is_skipped(tmp_path: Path, prepared: Path) -> None:
    spec, _ = run_dir(tmp_path / "stop", prepared)
    result = train(spec, {FAULT_NAN_AT_STEP: "3"})
    assert result.returncode == EXIT_NONFINITE
    assert "non-finite loss at step 3" in result.stdout + result.stderr
    spec, out = run_dir(tmp_path / "skip", prepared, nonFiniteLoss="skipBatch")
    assert train(spec, {FAULT_NAN_AT_STEP: "3"}).returncode == 0
    history = metrics(out)
    assert len(history) == STEPS and history[2]["loss"] is None  # step 3: every micro-batch skipped
    assert all(r["loss"] is not None for r in history[3:])  # and training went on


def lr_by_step(spec: Path) -> list[float]:
    """The rate of every step as the schedule defines it (a skipped update does not shift the schedule)."""
    from cpt.kube_yaml import load_all
    from cpt_pipeline.train.schedule import lr_multiplier

    training = ContinuedPretrain.model_validate(load_all(spec.read_text())[0]).spec.training
    return [float(training.optimizer.lr) * lr_multiplier(training.schedule, STEPS)(s) for s in range(STEPS)]


def test_a_nan_made_inside_the_forward_on_one_rank_stops_every_rank(tmp_path: Path, prepared: Path) -> None:
    """`stop` agrees across ranks: both stop at the same point with exit 3, none is left in a collective."""
    spec, _ = run_dir(tmp_path, prepared)
    result = train(spec, {NAN_IN_FORWARD: "3:1"})  # step 3, first micro-batch, rank 1 only
    assert result.returncode == EXIT_NONFINITE, result.stderr[-3000:]
    assert result.stdout.count('"kind": "non-finite-loss"') == 2, result.stdout[-3000:]  # one per rank
    assert "non-finite loss at step 3 in 1 of 2 micro-batches (all ranks)" in result.stdout


@pytest.mark.parametrize("zero", [0, 3])
def test_skip_batch_skips_the_update_of_a_step_whose_forward_made_a_nan(
    tmp_path: Path, prepared: Path, zero: int
) -> None:
    """A NaN made inside one rank's forward (0 x NaN is NaN: its gradients are NaN): every rank skips the
    step's update, so the weights stay finite and training goes on; the schedule keeps its step."""
    deepspeed = {"zeroStage": zero, "precision": "fp32", "gradientCheckpointing": False}
    spec, out = run_dir(tmp_path, prepared, nonFiniteLoss="skipBatch", deepspeed=deepspeed)
    result = train(spec, {NAN_IN_FORWARD: "3:1"})
    assert result.returncode == 0, result.stderr[-3000:]
    history = metrics(out)
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    assert history[2]["loss"] is None and history[2]["skipped"] == "nonFinite"
    assert all(r["loss"] is not None and "skipped" not in r for r in history[3:])  # the weights stayed finite
    assert [r["lr"] for r in history] == pytest.approx(lr_by_step(spec), rel=1e-9)


def test_a_step_deepspeed_skips_for_non_finite_gradients_is_not_a_non_finite_loss(
    tmp_path: Path, prepared: Path
) -> None:
    """A finite loss with infinite gradients (what an fp16 loss-scale overflow looks like; fp16 does not run on
    CPU): DeepSpeed skips the update itself; under skipBatch the run goes on, under stop it stops on
    non-finite gradients, not on a loss."""
    spec, out = run_dir(tmp_path, prepared, nonFiniteLoss="skipBatch")
    result = train(spec, {INF_GRADIENT: "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    history = metrics(out)
    assert history[2]["loss"] is not None and history[2]["skipped"] == "nonFinite"
    assert all("skipped" not in r for r in history[3:])
    assert [r["lr"] for r in history] == pytest.approx(lr_by_step(spec), rel=1e-9)
    spec, _ = run_dir(tmp_path / "stop", prepared)
    stopped = train(spec, {INF_GRADIENT: "3"})
    assert stopped.returncode == EXIT_NONFINITE
    assert "non-finite gradients at step 3 (finite losses, fp32)" in stopped.stdout


def test_sigterm_saves_a_checkpoint_and_exits_with_the_preemption_code(tmp_path: Path, prepared: Path) -> None:
    spec, out = run_dir(tmp_path, prepared, checkpoint={"intervalSteps": 1000, "keepLast": 1})
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "cpt_pipeline", "train", "--spec", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if '"event": "train_step", "step": 2,' in line:
            process.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    rest = process.stdout.read()
    assert process.wait(120) == EXIT_PREEMPTED, rest[-3000:]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("-")[1])
    assert 2 <= step < STEPS
    spec_resumed = train(spec)
    assert spec_resumed.returncode == 0
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
