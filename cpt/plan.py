"""A run's plan before anything runs: optimizer steps and tokens per step, memory per device for each ZeRO stage
and what `zeroStage: auto` picks, and time, GPU-hours and cost per GPU type from the throughput table.

Pure: a spec (and, for `cpt plan`, a local model folder) in, figures out. `cpt plan` prints it; the operator
writes `status_plan` into status.plan on every pass (kubectl get cpt's Expected column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cpt.api import ContinuedPretrainSpec
from cpt.memory import GIB, Footprint, MemoryPlanError, allowed_stages, choose_stage
from cpt.shapes import FoundShape, model_shape
from cpt.throughput import GPU_PRODUCT_LABEL, Figure, Gpu, Table, load_table

# The GPU type status.plan assumes when the spec requests GPUs without naming a product: the paper's.
DEFAULT_GPU = "A100-80GB"
GPU_RESOURCE = "nvidia.com/gpu"
ASSUMED = "default"  # how gpuFrom starts when no label named the GPU (the Expected column then says "assumed")
# A figure is scaled to models whose FLOPs per token are within this factor of its own model's (either way):
# MFU falls for much smaller models and rises for larger ones, so farther out the same-MFU rule misleads.
MAX_SCALE = 10.0


@dataclass(frozen=True)
class Steps:
    """Optimizer steps of a run, from the spec alone."""

    processes: int
    tokens_per_step: int
    steps: int
    milestones: dict[int, int]  # optimizer step -> token milestone (the budget included)

    @property
    def tokens(self) -> int:
        """Tokens trained: whole steps, so up to one step more than the budget."""
        return self.steps * self.tokens_per_step


def step_plan(spec: ContinuedPretrainSpec) -> Steps:
    """Processes x micro-batch x gradient accumulation x sequence length tokens per step; each milestone (and the
    budget) ends at the first step whose tokens reach it."""
    training = spec.training
    per_step = training.tokens_per_step(spec.data.sequence_length)
    milestones = {max(1, math.ceil(m / per_step)): m for m in spec.data.milestones_with_budget}
    return Steps(training.world_size, per_step, max(milestones), milestones)


@dataclass(frozen=True)
class Memory:
    """The per-device estimate of each allowed ZeRO stage, and the stage `auto` picks on each GPU type."""

    estimates: dict[int, int]  # stage -> bytes per device
    auto: dict[str, int | None]  # GPU type -> stage (None: no stage fits)
    problems: dict[str, str]  # GPU type -> why no stage fits


def memory_plan(spec: ContinuedPretrainSpec, shape: FoundShape, gpus: list[Gpu]) -> Memory | None:
    """The estimate (cpt/memory.py) at the spec's micro-batch; None when the model's shape is unknown."""
    if shape.shape is None:
        return None
    training = spec.training
    footprint = Footprint(
        training.deepspeed,
        shape.shape,
        training.deepspeed.precision,
        training.micro_batch_size,
        spec.data.sequence_length,
        training.world_size,
        training.compile,
    )
    estimates = {stage: footprint.bytes(stage) for stage in allowed_stages(training.deepspeed)}
    auto: dict[str, int | None] = {}
    problems: dict[str, str] = {}
    for gpu in gpus:
        try:
            auto[gpu.name] = choose_stage(footprint, gpu.usable_bytes)[0]
        except MemoryPlanError as error:
            auto[gpu.name], problems[gpu.name] = None, str(error)
    return Memory(estimates, auto, problems)


@dataclass(frozen=True)
class Estimate:
    """Training time of the run on one GPU type from one figure of the table."""

    gpu: str
    figure: Figure
    scale: float  # the figure's model FLOPs per token over this run's
    tokens_per_second: float  # per GPU, scaled
    seconds: float
    gpu_hours: float
    cost: float | None  # at the price per GPU-hour given


def unusable(figure: Figure, found: FoundShape, spec: ContinuedPretrainSpec) -> str | None:
    """Why `figure` cannot estimate this run (None when it can): an unknown model, fp32 training (the figures
    are bf16), or a model whose FLOPs per token are more than MAX_SCALE times from the measured model's."""
    if found.shape is None:
        return "the model's shape is unknown"
    if spec.training.deepspeed.precision == "fp32":
        return "the figures were measured in bf16 and this spec trains in fp32"
    scale = figure.scale(found.shape, spec.data.sequence_length)
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        return (
            f"this model's FLOPs per token are {1 / scale:.3g}x those of {figure.model}, beyond the {MAX_SCALE:g}x "
            "within which a figure is scaled (the same MFU no longer holds)"
        )
    return None


def estimate(
    figure: Figure, found: FoundShape, spec: ContinuedPretrainSpec, steps: Steps, price: float | None
) -> Estimate | str:
    """The time of `steps` at `figure` scaled to the model, or why the figure cannot tell (`unusable`)."""
    why = unusable(figure, found, spec)
    if why is not None or found.shape is None:
        return why or "the model's shape is unknown"
    scale = figure.scale(found.shape, spec.data.sequence_length)
    per_gpu = figure.tokens_per_second * scale
    seconds = steps.tokens / (per_gpu * steps.processes)
    gpu_hours = seconds / 3600 * steps.processes
    cost = None if price is None else gpu_hours * price
    return Estimate(figure.gpu, figure, scale, per_gpu, seconds, gpu_hours, cost)


@dataclass(frozen=True)
class Plan:
    steps: Steps
    shape: FoundShape
    gpus: list[Gpu]
    memory: Memory | None
    estimates: list[Estimate] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # GPU types without a figure
    refused: list[tuple[Figure, str]] = field(default_factory=list)  # figures that cannot estimate this run, why


def run_plan(
    spec: ContinuedPretrainSpec,
    read_local: bool,
    gpus: list[str] | None = None,
    price: float | None = None,
    table: Table | None = None,
) -> Plan:
    """The whole plan for the GPU types named (default: every type in the table)."""
    table = table or load_table()
    chosen = [table.gpu(name) for name in gpus] if gpus else list(table.gpus)
    steps, found = step_plan(spec), model_shape(spec.model, read_local)
    plan = Plan(steps, found, chosen, memory_plan(spec, found, chosen))
    for gpu in chosen:
        figures = table.figures_for(gpu.name)
        if not figures:
            plan.missing.append(gpu.name)
        for figure in figures:
            result = estimate(figure, found, spec, steps, price)
            if isinstance(result, Estimate):
                plan.estimates.append(result)
            else:
                plan.refused.append((figure, result))
    return plan


def spec_gpu(
    spec: ContinuedPretrainSpec, table: Table, flavor: tuple[str, str] | None = None
) -> tuple[str | None, str]:
    """(GPU type, why) a run's pods get: the GPU product of the Kueue ResourceFlavor the training was admitted to
    (`flavor`: its name and product label), else the node selector's, else DEFAULT_GPU when GPUs are requested;
    (None, why) for a run that requests no GPU or lands on a product the table does not know."""
    if flavor is not None:
        where = f"Kueue ResourceFlavor {flavor[0]}: {GPU_PRODUCT_LABEL} {flavor[1]}"
        known = table.for_product(flavor[1])
        return (known.name, where) if known else (None, f"{where} is no GPU type of the throughput table")
    product = spec.scheduling.node_selector.get(GPU_PRODUCT_LABEL)
    if product:
        gpu = table.for_product(product)
        if gpu is None:
            return None, f"{GPU_PRODUCT_LABEL} {product} is no GPU type of the throughput table"
        return gpu.name, f"scheduling.nodeSelector {GPU_PRODUCT_LABEL}: {product}"
    resources = spec.training.resources
    if str({**resources.requests, **resources.limits}.get(GPU_RESOURCE, 0)) != "0":
        return DEFAULT_GPU, f"{ASSUMED} (the spec requests {GPU_RESOURCE} without a {GPU_PRODUCT_LABEL} node selector)"
    return None, f"no GPU requested (training.resources has no {GPU_RESOURCE})"


def duration(seconds: float) -> str:
    """E.g. 7h30m, 12m05s (the format of status.training.eta)."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


PLAN_FIELDS = (
    "steps",
    "tokensPerStep",
    "tokens",
    "parameters",
    "gpu",
    "gpuFrom",
    "zeroStage",
    "memoryPerDeviceGiB",
    "tokensPerSecondPerGpu",
    "expectedSeconds",
    "expectedDuration",
    "source",
    "note",
)


def failed_plan(error: Exception) -> dict[str, object]:
    """status.plan when computing it raised: every field None, `note` the error (one line); the pass goes on."""
    message = " ".join(f"{type(error).__name__}: {error}".split())
    return {**dict.fromkeys(PLAN_FIELDS), "note": f"status.plan failed: {message}"}


def status_plan(
    spec: ContinuedPretrainSpec, table: Table | None = None, flavor: tuple[str, str] | None = None
) -> dict[str, object]:
    """status.plan: steps and tokens, and on the GPU type the pods get (`spec_gpu`, `flavor` the ResourceFlavor
    Kueue admitted the training to and its GPU product, if any) the ZeRO stage, its memory
    per device and the expected training time from that type's preferred figure. Every field is present, None
    where unknown (`note` says why), so a merge patch clears what no longer holds after an edit."""
    table = table or load_table()
    steps, found = step_plan(spec), model_shape(spec.model, read_local=False)
    gpu, gpu_from = spec_gpu(spec, table, flavor)
    out: dict[str, object] = {
        **dict.fromkeys(PLAN_FIELDS),
        "steps": steps.steps,
        "tokensPerStep": steps.tokens_per_step,
        "tokens": steps.tokens,
        "parameters": found.shape.params if found.shape else None,
        "gpu": gpu,
        "gpuFrom": gpu_from,
    }
    if found.shape is None or gpu is None:
        out["note"] = found.source if found.shape is None else gpu_from
        return out
    memory = memory_plan(spec, found, [table.gpu(gpu)])
    assert memory is not None  # the shape is known
    requested = spec.training.deepspeed.zero_stage
    stage = memory.auto[gpu] if requested == "auto" else int(requested)
    out["zeroStage"] = stage
    out["memoryPerDeviceGiB"] = None if stage is None else round(memory.estimates[stage] / GIB, 2)
    out["note"] = memory.problems.get(gpu)
    figures = table.figures_for(gpu)
    if not figures:
        out["note"] = _notes(out["note"], f"no throughput figure for {gpu} in cpt/throughput.yaml")
        return out
    results = [estimate(figure, found, spec, steps, None) for figure in figures]
    time = next((r for r in results if isinstance(r, Estimate)), None)
    if time is None:
        out["note"] = _notes(out["note"], f"{figures[0].kind} figure for {gpu}: {results[0]}")
        return out
    out["tokensPerSecondPerGpu"] = round(time.tokens_per_second)
    out["expectedSeconds"] = round(time.seconds)
    assumed = f" ({gpu} assumed)" if gpu_from.startswith(ASSUMED) else ""  # no label named it: the column says so
    out["expectedDuration"] = duration(time.seconds) + assumed
    out["source"] = figure_line(time.figure, time.scale)
    return out


def _notes(*notes: object) -> str:
    return "; ".join(str(note) for note in notes if note)


def figure_line(figure: Figure, scale: float) -> str:
    """One line naming a figure, its source and the scaling applied."""
    scaled = "same model FLOPs per token" if abs(scale - 1) < 0.005 else f"scaled x{scale:.3f} by model FLOPs per token"
    return (
        f"{figure.kind}: {figure.tokens_per_second:,.0f} tokens/s per {figure.gpu} on {figure.model} at sequence "
        f"{figure.sequence_length} ({scaled}); {figure.source}"
    )
