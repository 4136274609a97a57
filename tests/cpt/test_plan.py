"""`cpt plan` and status.plan: steps, model shape, memory per ZeRO stage, time per GPU type, each checked by
arithmetic done here by hand (or by transformers itself for parameter counts), not by the plan's own code."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpt.api import ContinuedPretrain, ContinuedPretrainSpec
from cpt.api.model import ModelSpec
from cpt.cli import main
from cpt.memory import Footprint
from cpt.plan import DEFAULT_GPU, memory_plan, run_plan, status_plan, step_plan
from cpt.shapes import PRESETS, llama_parameters, model_shape
from cpt.throughput import load_table, parse_table
from tests.cpt.test_spec import minimal

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "manifests" / "examples" / "paper-mobilellm-fineweb-edu.yaml"
QUICKSTART_MODEL = REPO / "manifests" / "examples" / "quickstart" / "model"
# MobileLLM-125M by hand: embeddings 32000 x 576 (tied head), 30 layers of q/o 576x576, k/v 576x192 (3 of 9 heads
# of 64), a SwiGLU MLP 3 x 576 x 1536 and two norms of 576, plus the final norm.
MOBILELLM_PARAMS = 32000 * 576 + 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576
PAPER_TOKENS_PER_STEP = 3 * 1 * 80 * 2 * 2000  # nodes x procsPerNode x microBatchSize x gradAccumulation x seq
PAPER_STEPS = math.ceil(1_000_000_000 / PAPER_TOKENS_PER_STEP)
PAPER_FIGURE = 12346  # the table's A100 figure from the paper: 400M tokens / (3 h x 3 GPUs)


def paper() -> ContinuedPretrain:
    return ContinuedPretrain.model_validate(yaml.safe_load(PAPER.read_text()))


def spec_with(**changes: Any) -> ContinuedPretrainSpec:
    doc = minimal()
    for path, value in changes.items():
        node = doc["spec"]
        *parents, last = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return ContinuedPretrain.model_validate(doc).spec


def test_steps_and_tokens_per_step_come_from_the_spec() -> None:
    steps = step_plan(paper().spec)
    assert steps.tokens_per_step == PAPER_TOKENS_PER_STEP == 960_000
    assert steps.steps == PAPER_STEPS == 1042 and steps.tokens == 1042 * 960_000
    assert steps.milestones == {math.ceil(400_000_000 / 960_000): 400_000_000, 1042: 1_000_000_000}


def test_the_trainer_takes_the_steps_the_plan_shows() -> None:
    from cpt_pipeline.train.loop import Plan

    spec = paper().spec
    trainer, planned = Plan.of(spec, spec.training.world_size), step_plan(spec)
    assert (trainer.total_steps, trainer.tokens_per_step, trainer.milestones) == (
        planned.steps,
        planned.tokens_per_step,
        planned.milestones,
    )


def test_the_paper_table_figure_is_the_papers_own_statement() -> None:
    """The reference study: 400M tokens in about 3 hours on 3 A100s (section 4.2.2)."""
    (figure,) = [f for f in load_table().figures if f.kind == "paper"]
    assert figure.tokens_per_second == round(400e6 / (3 * 3600 * 3)) == PAPER_FIGURE
    assert "2504.09687" in figure.source


@pytest.mark.parametrize(("gpu", "peak", "mfu"), [("A100-80GB", 312e12, 0.4479), ("H100-80GB", 989e12, 0.349)])
def test_the_published_figures_give_back_the_mfu_their_source_prints(gpu: str, peak: float, mfu: float) -> None:
    """llm-foundry's tables print the MFU of each row: the model shape in our table must reproduce it."""
    (figure,) = [f for f in load_table().figures_for(gpu) if f.kind == "published"]
    flops = 6 * figure.parameters + 12 * figure.layers * figure.hidden * figure.sequence_length
    assert figure.tokens_per_second * flops / peak == pytest.approx(mfu, abs=0.0005)
    assert figure.source.startswith("llm-foundry") and "github.com/mosaicml/llm-foundry" in figure.source


def test_a_table_entry_for_an_unknown_gpu_is_refused() -> None:
    document = yaml.safe_load((REPO / "cpt" / "throughput.yaml").read_text())
    document["figures"][0]["gpu"] = "B300"
    with pytest.raises(ValueError, match=r"figures\[0\]"):
        parse_table(document)


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["mobilellm-125m"],
        {**PRESETS["tiny"], "tie_word_embeddings": False},
        {**PRESETS["tiny"], "attention_bias": True, "mlp_bias": True, "head_dim": 8},
    ],
    ids=["mobilellm", "untied", "biases-head-dim"],
)
def test_the_llama_formula_counts_what_transformers_builds(config: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from cpt_pipeline.train.model import count_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    assert llama_parameters(config) == count_parameters(model)


def test_the_paper_models_size_is_known_by_hand() -> None:
    found = model_shape(paper().spec.model, read_local=False)
    assert found.shape is not None and found.shape.params == MOBILELLM_PARAMS
    assert (found.shape.layers, found.shape.hidden, found.shape.vocab) == (30, 576, 32000)


def test_a_local_model_folder_is_read_by_the_cli_only() -> None:
    from transformers import AutoModelForCausalLM

    from cpt_pipeline.train.model import count_parameters

    spec = ModelSpec(uri=str(QUICKSTART_MODEL))
    found = model_shape(spec, read_local=True)
    assert found.shape is not None and "safetensors" in found.source
    assert found.shape.params == count_parameters(AutoModelForCausalLM.from_pretrained(QUICKSTART_MODEL))
    unknown = model_shape(spec, read_local=False)
    assert unknown.shape is None and "operator reads no model files" in unknown.source


def test_memory_per_stage_is_the_trainers_estimate_and_auto_takes_the_lowest_that_fits() -> None:
    spec = paper().spec
    table = load_table()
    found = model_shape(spec.model, read_local=False)
    memory = memory_plan(spec, found, list(table.gpus))
    assert memory is not None and sorted(memory.estimates) == [1, 2, 3]  # offloadOptimizer: cpu needs stage >= 1
    ds = spec.training.deepspeed
    footprint = Footprint(ds, found.shape, "bf16", 80, 2000, 3)  # type: ignore[arg-type]
    assert memory.estimates == {stage: footprint.bytes(stage) for stage in (1, 2, 3)}
    for gpu in table.gpus:
        usable = int(gpu.memory_gb * 10**9) - 2**30  # less the CUDA context
        assert memory.auto[gpu.name] == min(s for s, need in memory.estimates.items() if need <= usable)


def test_when_no_stage_fits_auto_names_the_micro_batch() -> None:
    spec = spec_with(
        training__microBatchSize=4000,
        training__deepspeed={"gradientCheckpointing": False},
        training__resources={"limits": {"nvidia.com/gpu": 1}},
    )
    plan = status_plan(spec)
    assert plan["zeroStage"] is None and plan["memoryPerDeviceGiB"] is None
    assert "microBatchSize 4000 does not fit" in plan["note"]


def test_time_gpu_hours_and_cost_by_hand() -> None:
    plan = run_plan(paper().spec, read_local=False, gpus=["A100-80GB"], price=2.5)
    by_kind = {e.figure.kind: e for e in plan.estimates}
    seconds = PAPER_STEPS * PAPER_TOKENS_PER_STEP / (PAPER_FIGURE * 3)
    assert by_kind["paper"].seconds == pytest.approx(seconds) and by_kind["paper"].scale == pytest.approx(1.0)
    assert by_kind["paper"].gpu_hours == pytest.approx(seconds * 3 / 3600)
    assert by_kind["paper"].cost == pytest.approx(seconds * 3 / 3600 * 2.5)
    mpt = 6 * 125_311_488 + 12 * 12 * 768 * 2048  # llm-foundry's MPT-125M at 2048: model FLOPs per token
    mine = 6 * MOBILELLM_PARAMS + 12 * 30 * 576 * 2000
    assert by_kind["published"].tokens_per_second == pytest.approx(142_830 * mpt / mine)
    assert plan.missing == []


def test_status_plan_of_the_paper_example() -> None:
    plan = status_plan(paper().spec)
    seconds = PAPER_STEPS * PAPER_TOKENS_PER_STEP / (PAPER_FIGURE * 3)
    assert plan["steps"] == PAPER_STEPS and plan["tokensPerStep"] == PAPER_TOKENS_PER_STEP
    assert plan["gpu"] == "A100-80GB" and "NVIDIA-A100-SXM4-80GB" in plan["gpuFrom"]  # from the node selector
    assert plan["zeroStage"] == 3  # the spec's own stage
    assert plan["expectedSeconds"] == round(seconds)
    hours, rest = divmod(round(seconds), 3600)
    assert plan["expectedDuration"] == f"{hours}h{rest // 60:02d}m" == "7h30m"
    assert plan["source"].startswith("paper: 12,346 tokens/s per A100-80GB")


@pytest.mark.parametrize(
    ("changes", "gpu", "why"),
    [
        ({"training__resources": {"limits": {"nvidia.com/gpu": 1}}}, DEFAULT_GPU, "default"),
        ({"scheduling__nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}, "H100-80GB", "HBM3"),
        ({"scheduling__nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}, None, "no GPU type"),
        ({"training__resources": {"limits": {"nvidia.com/gpu": 0}}}, None, "no GPU requested"),
        ({}, None, "no GPU requested"),
    ],
    ids=["requested-no-product", "h100-product", "unknown-product", "zero-gpus", "cpu"],
)
def test_the_gpu_type_comes_from_the_spec(changes: dict[str, Any], gpu: str | None, why: str) -> None:
    plan = status_plan(spec_with(**changes))
    assert plan["gpu"] == gpu and why in plan["gpuFrom"]
    assert (plan["expectedDuration"] is None) == (gpu is None)
    assumed = gpu == DEFAULT_GPU  # the column says so where no label named the GPU
    assert (plan["expectedDuration"] or "").endswith(f" ({DEFAULT_GPU} assumed)") == assumed
    assert plan["steps"] == math.ceil(1_000_000_000 / (80 * 2 * 2000))  # minimal(): one process, the defaults


def test_a_gpu_type_without_a_figure_still_gets_its_memory_plan() -> None:
    table = load_table()
    table = dataclasses.replace(table, figures=tuple(f for f in table.figures if f.gpu != "H200"))
    plan = status_plan(spec_with(scheduling__nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H200"}), table)
    assert plan["gpu"] == "H200" and plan["zeroStage"] == 0 and plan["memoryPerDeviceGiB"] > 0  # one process: 0
    assert plan["expectedDuration"] is None and plan["note"] == "no throughput figure for H200 in cpt/throughput.yaml"


@pytest.mark.parametrize(
    ("architecture", "precision", "why"),
    [
        ({"preset": "tiny"}, "bf16", "beyond the 10x within which a figure is scaled"),  # 6N: ~1/1000 of 125M
        ({"preset": "mobilellm-125m"}, "fp32", "measured in bf16 and this spec trains in fp32"),
    ],
    ids=["far-smaller-model", "fp32"],
)
def test_a_figure_is_not_stretched_beyond_what_it_measured(architecture: dict, precision: str, why: str) -> None:
    spec = spec_with(
        model={"architecture": architecture, "tokenizer": "t/t"},
        training__deepspeed={"precision": precision},
        training__resources={"limits": {"nvidia.com/gpu": 1}},
    )
    plan = run_plan(spec, read_local=False, gpus=["A100-80GB"])
    assert plan.estimates == [] and {f.kind for f, _ in plan.refused} == {"paper", "published"}
    assert all(why in reason for _, reason in plan.refused)
    status = status_plan(spec)
    assert status["expectedDuration"] is None and why in status["note"] and status["zeroStage"] == 0


def test_an_unknown_model_keeps_steps_and_says_why_the_time_is_unknown() -> None:
    plan = status_plan(
        spec_with(model={"uri": "someone/unknown-7b"}, training__resources={"limits": {"nvidia.com/gpu": 1}})
    )
    assert plan["steps"] == math.ceil(1_000_000_000 / (80 * 2 * 2000))
    assert plan["parameters"] is None and plan["expectedDuration"] is None
    assert "someone/unknown-7b" in plan["note"] and "KNOWN_MODELS" in plan["note"]


def test_cpt_plan_prints_the_paper_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PAPER), "--gpu", "A100-80GB", "--price-per-gpu-hour", "2.5"]) == 0
    out = capsys.readouterr().out
    seconds = PAPER_STEPS * PAPER_TOKENS_PER_STEP / (PAPER_FIGURE * 3)
    assert f"= {PAPER_TOKENS_PER_STEP:,} tokens per optimizer step" in out
    assert f"{PAPER_STEPS:,} steps for the budget of 1,000,000,000 tokens" in out
    assert f"milestone 400,000,000 tokens: step {math.ceil(400e6 / PAPER_TOKENS_PER_STEP)}" in out
    assert f"{MOBILELLM_PARAMS / 1e6:.1f}M parameters" in out
    assert "ZeRO stage 3:" in out and "<- the spec's zeroStage" in out and "zeroStage auto picks: stage" in out
    paper_row = next(line for line in out.splitlines() if line.split()[:2] == ["A100-80GB", "paper"])
    assert paper_row.split()[2:] == [
        f"{PAPER_FIGURE:,}",
        f"{seconds / 3600:.2f}",
        f"{seconds * 3 / 3600:.2f}",
        f"${seconds * 3 / 3600 * 2.5:,.2f}",
    ]
    assert "arXiv 2504.09687" in out and "llm-foundry" in out and "H100" not in out  # only the GPU asked for


def test_cpt_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PAPER), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == PAPER_STEPS and data["tokensPerStep"] == PAPER_TOKENS_PER_STEP
    assert data["model"]["parameters"] == MOBILELLM_PARAMS
    assert {e["gpu"] for e in data["estimates"]} == {"A100-80GB", "H100-80GB", "H200"} and data["noFigure"] == []
    h200 = next(e for e in data["estimates"] if e["gpu"] == "H200")  # measured by this product on an H200
    assert h200["kind"] == "bench" and h200["scale"] == 1.0 and "bench/gpu_throughput.py" in h200["source"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--gpu", "B300"], "--gpu: unknown GPU type 'B300'"),
        (["--price-per-gpu-hour", "-1"], "--price-per-gpu-hour: -1.0 is negative"),
    ],
)
def test_bad_options_are_one_line(args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(PAPER), *args]) == 1
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_the_operator_side_plans_without_torch() -> None:
    """The operator image has no torch: status.plan (shape, memory, time) is computed with it blocked."""
    code = (
        "import sys\nfor name in ('torch', 'transformers', 'deepspeed', 'cpt_pipeline'):\n"
        "    sys.modules[name] = None\n"
        "import yaml\nfrom cpt.api import ContinuedPretrain\nfrom cpt.plan import status_plan\n"
        f"spec = ContinuedPretrain.model_validate(yaml.safe_load(open({str(PAPER)!r}))).spec\n"
        "print(status_plan(spec)['expectedDuration'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == status_plan(paper().spec)["expectedDuration"]
