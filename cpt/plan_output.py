"""`cpt plan`'s output: a plan (cpt/plan.py) as text for people or as JSON."""

from __future__ import annotations

from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.memory import GIB
from cpt.plan import Plan, figure_line
from cpt.throughput import TABLE


def _count(number: int, one: str, many: str) -> str:
    return f"{number:,} {one if number == 1 else many}"


def _steps(spec: ContinuedPretrainSpec, plan: Plan) -> list[str]:
    training, steps = spec.training, plan.steps
    lines = [
        "Steps",
        f"  {_count(steps.processes, 'process', 'processes')} ({_count(training.nodes, 'node', 'nodes')} x "
        f"{training.procs_per_node}) x "
        f"{training.micro_batch_size} sequences x {training.grad_accumulation} micro-steps x "
        f"{spec.data.sequence_length:,} tokens = {steps.tokens_per_step:,} tokens per optimizer step",
        f"  {steps.steps:,} steps for the budget of {spec.data.token_budget:,} tokens "
        f"({steps.tokens:,} trained: whole steps)",
    ]
    lines += [
        f"  milestone {tokens:,} tokens: step {step:,}"
        for step, tokens in sorted(steps.milestones.items())
        if tokens != spec.data.token_budget
    ]
    return lines


def _model(plan: Plan) -> list[str]:
    shape = plan.shape.shape
    if shape is None:
        return ["Model", f"  unknown: {plan.shape.source}"]
    return [
        "Model",
        f"  {shape.params / 1e6:.1f}M parameters, {shape.layers} layers, hidden {shape.hidden}, vocabulary "
        f"{shape.vocab:,}: {plan.shape.source}",
    ]


def _memory(spec: ContinuedPretrainSpec, plan: Plan) -> list[str]:
    if plan.memory is None:
        return ["Memory per device", "  unknown: the model's shape is unknown"]
    ds = spec.training.deepspeed
    settings = [ds.precision, "gradient checkpointing" if ds.gradient_checkpointing else "no gradient checkpointing"]
    settings += ["optimizer offloaded to CPU"] * (ds.offload_optimizer == "cpu")
    settings += ["parameters offloaded to CPU"] * (ds.offload_params == "cpu")
    lines = [
        f"Memory per device (cpt/memory.py estimate: {', '.join(settings)}, micro-batch "
        f"{spec.training.micro_batch_size} x {spec.data.sequence_length:,} tokens, "
        f"{_count(plan.steps.processes, 'process', 'processes')})"
    ]
    for stage, needed in plan.memory.estimates.items():
        mark = "   <- the spec's zeroStage" if str(ds.zero_stage) == str(stage) else ""
        lines.append(f"  ZeRO stage {stage}: {needed / GIB:6.2f} GiB{mark}")
    picks = [
        f"stage {plan.memory.auto[gpu.name]} on {gpu.name} ({gpu.usable_bytes / GIB:.1f} GiB usable)"
        if plan.memory.auto[gpu.name] is not None
        else f"nothing on {gpu.name}: {plan.memory.problems[gpu.name]}"
        for gpu in plan.gpus
    ]
    lines.append(f"  zeroStage auto picks: {'; '.join(picks)}")
    return lines


def _times(plan: Plan, price: float | None) -> list[str]:
    head = f"Time for {plan.steps.tokens:,} tokens on {_count(plan.steps.processes, 'GPU', 'GPUs')} (training only)"
    if plan.shape.shape is None:
        return [head, "  unknown: the model's shape is unknown, so no figure can be scaled to it"]
    if not plan.estimates:
        lines = [head, *(f"  {f.gpu:<10} {f.kind:<10} no estimate: {why}" for f, why in plan.refused)]
        return lines + [f"  {gpu:<10} no figure in cpt/{TABLE.name}" for gpu in plan.missing]
    cost = f"  cost (${price:.2f}/GPU-hour)" if price is not None else ""
    lines = [head, f"  {'GPU':<10} {'figure':<10} {'tokens/s/GPU':>12} {'hours':>8} {'GPU-hours':>10}{cost}"]
    for e in plan.estimates:
        money = f"  ${e.cost:,.2f}" if e.cost is not None else ""
        lines.append(
            f"  {e.gpu:<10} {e.figure.kind:<10} {e.tokens_per_second:>12,.0f} {e.seconds / 3600:>8.2f} "
            f"{e.gpu_hours:>10.2f}{money}"
        )
    lines += [f"  {f.gpu:<10} {f.kind:<10} no estimate: {why}" for f, why in plan.refused]
    hint = "(bench/gpu_throughput.py measures one)"
    lines += [f"  {gpu:<10} no figure in cpt/{TABLE.name} {hint}" for gpu in plan.missing]
    lines.append(
        f"Figures (cpt/{TABLE.name}), scaled to this model by model FLOPs per token (6N + 12 L d s at the run's "
        "sequence length), i.e. at the source's MFU:"
    )
    lines += [f"  {figure_line(e.figure, e.scale)}" for e in plan.estimates]
    return lines


def render_text(spec: ContinuedPretrainSpec, plan: Plan, title: str, price: float | None) -> str:
    sections = [_steps(spec, plan), _model(plan), _memory(spec, plan), _times(plan, price)]
    return f"Plan of {title}\n\n" + "\n\n".join("\n".join(s) for s in sections) + "\n"


def as_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (camelCase keys, bytes and seconds)."""
    shape = plan.shape.shape
    memory = plan.memory
    return {
        "steps": plan.steps.steps,
        "tokensPerStep": plan.steps.tokens_per_step,
        "tokens": plan.steps.tokens,
        "processes": plan.steps.processes,
        "milestoneSteps": {str(step): tokens for step, tokens in sorted(plan.steps.milestones.items())},
        "model": {
            "source": plan.shape.source,
            **(
                {"parameters": shape.params, "layers": shape.layers, "hidden": shape.hidden, "vocab": shape.vocab}
                if shape
                else {}
            ),
        },
        "memory": None
        if memory is None
        else {
            "bytesPerDevice": {str(stage): needed for stage, needed in memory.estimates.items()},
            "autoStage": memory.auto,
            "problems": memory.problems,
        },
        "estimates": [
            {
                "gpu": e.gpu,
                "kind": e.figure.kind,
                "tokensPerSecondPerGpu": e.tokens_per_second,
                "scale": e.scale,
                "seconds": e.seconds,
                "gpuHours": e.gpu_hours,
                "cost": e.cost,
                "source": e.figure.source,
            }
            for e in plan.estimates
        ],
        "noFigure": plan.missing,
        "noEstimate": [{"gpu": f.gpu, "kind": f.kind, "why": why} for f, why in plan.refused],
    }
