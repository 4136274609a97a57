"""The report's figures (matplotlib figures; `png` renders and closes one): the loss curve, benchmark scores
against tokens (error bars from lm-eval's stderr) and domain gain against forgetting (perplexity change against
the base model, each on its own axis, so a domain perplexity that falls 10,000-fold and a general one that rises
10% are both visible). Milestones, budget segments, the guardrail and the recommended export are marked where
the run has them."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from cpt_pipeline.report.marks import Marks

TASK_TITLES = {
    "mmlu": "MMLU",
    "arc_challenge": "ARC Ch.",
    "arc_easy": "ARC Easy",
    "winogrande": "Winogr.",
    "hellaswag": "H.Swag",
    "boolq": "BoolQ",
    "piqa": "PIQA",
}
NAN = float("nan")


def token_label(tokens: int) -> str:
    if tokens == 0:
        return "0 (Base)"
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if tokens >= size:
            return f"≈ {tokens / size:.3g}{suffix}"
    return str(tokens)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _style(axis: Any, ylabel: str, title: str, **legend: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: token_label(int(x)).removeprefix("≈ ") if x > 0 else "0"))
    axis.set_xlabel("training tokens")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(**legend)


def _mark_tokens(axis: Any, milestones: list[int], marks: Marks) -> None:
    """Milestones as dashed lines, budget segments shaded alternately with the budget each ended at."""
    top = axis.get_ylim()[1]
    for milestone in milestones:
        axis.axvline(milestone, color="#999999", linestyle="--", linewidth=0.8)
    start = 0
    for index, end in enumerate(marks.segment_ends):
        if index % 2:
            axis.axvspan(start, end, color="#8c564b", alpha=0.07, linewidth=0)
        axis.axvline(end, color="#8c564b", linewidth=1.2, label="end of a budget segment" if index == 0 else None)
        axis.annotate(f"budget {token_label(end).removeprefix('≈ ')}", (end, top), fontsize=7, ha="right", va="top")
        start = end


def loss_figure(history: list[dict[str, Any]], milestones: list[int], marks: Marks) -> Any:
    figure, axis = _pyplot().subplots(figsize=(7, 4))
    points = [(r["tokens"], r["loss"]) for r in history if r.get("loss") is not None]
    axis.plot([p[0] for p in points], [p[1] for p in points], color="#1f77b4", linewidth=1.2, label="training loss")
    _mark_tokens(axis, milestones, marks)
    for milestone in milestones:
        axis.annotate(token_label(milestone), (milestone, axis.get_ylim()[1]), fontsize=8, ha="right", va="top")
    _style(axis, "loss", "Training loss")
    return figure


def _score(summary: dict[str, Any], task: str, key: str) -> float:
    value = next((x.get(key) for x in summary["scores"] if x["task"] == task), None)
    return NAN if value is None else float(value)


def efficiency_figure(summaries: list[dict[str, Any]], marks: Marks) -> Any:
    """Benchmark scores against tokens, each with lm-eval's standard error as its error bar, and their average."""
    figure, axis = _pyplot().subplots(figsize=(8, 4.5))
    tokens = [s["tokens"] for s in summaries]
    tasks = [s["task"] for s in summaries[0]["scores"]] if summaries else []
    for task in tasks:
        values = [_score(s, task, "score") for s in summaries]
        errors = [0.0 if e != e else e for e in (_score(s, task, "stderr") for s in summaries)]
        axis.errorbar(
            tokens, values, yerr=errors, marker="o", linewidth=1, capsize=3, label=TASK_TITLES.get(task, task)
        )
    averages = [NAN if s["average"] is None else s["average"] for s in summaries]
    axis.plot(tokens, averages, marker="s", color="black", linewidth=2.2, label="Avg")
    _mark_tokens(axis, [t for t in tokens if t], marks)
    title = "Benchmark scores vs tokens (error bars: ±1 stderr)"
    _style(axis, "score", title, fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return figure


def perplexity_changes(summaries: list[dict[str, Any]], which: str) -> list[tuple[int, float, float]]:
    """(tokens, perplexity, change against the base model's as a share) for every model scored on this set;
    empty without a base (0-token) evaluation of it."""
    scored = [(s["tokens"], ((s.get("perplexity") or {}).get(which) or {}).get("perplexity")) for s in summaries]
    base = next((p for t, p in scored if t == 0 and p), None)
    return [(t, float(p), float(p) / base - 1) for t, p in scored if p] if base else []


def _perplexity_text(perplexity: float) -> str:
    return f"{perplexity:,.0f}" if perplexity >= 1000 else f"{perplexity:.3g}"


def _change_panel(
    axis: Any, points: list[tuple[int, float, float]], color: str, label: str
) -> Callable[[float], float]:
    """Change against the base in %, or as a factor on a log axis where the perplexity moved more than 10-fold
    (-99.99% and -99.9% would look alike); returns where a change (a share) lies on the y axis."""
    tokens = [p[0] for p in points]
    factor = any(not 0.1 < 1 + c < 10 for _, _, c in points)
    values = [1 + c if factor else 100 * c for _, _, c in points]
    axis.plot(tokens, values, marker="o", color=color, label=label)
    axis.axhline(1 if factor else 0, color="black", linewidth=0.8)
    for t, (_, perplexity, _), y in zip(tokens, points, values, strict=True):  # the perplexity beside each point
        axis.annotate(_perplexity_text(perplexity), (t, y), fontsize=8, textcoords="offset points", xytext=(4, 6))
    axis.set_ylabel("perplexity / base model's (log scale)" if factor else "change vs base model (%)")
    if factor:
        axis.set_yscale("log")
    return (lambda change: 1 + change) if factor else (lambda change: 100 * change)


def forgetting_figure(summaries: list[dict[str, Any]], marks: Marks) -> Any:
    """Domain and general perplexity change against the base model, side by side; None without a base."""
    panels = [(w, perplexity_changes(summaries, w)) for w in ("domain", "general")]
    panels = [(w, p) for w, p in panels if p]
    if not panels:
        return None
    figure, axes = _pyplot().subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    milestones = [s["tokens"] for s in summaries if s["tokens"]]
    for axis, (which, points) in zip(axes[0], panels, strict=True):
        if which == "domain":
            _change_panel(axis, points, "#2ca02c", "domain (held-out)")
            title = "Domain gain: perplexity change vs base"
        else:
            y = _change_panel(axis, points, "#d62728", "general")
            title = "Forgetting: general perplexity change vs base"
            if marks.guardrail_general is not None:
                limit = marks.guardrail_general
                axis.axhline(y(limit), color="#ff7f0e", linestyle="-.", label=f"guardrail +{100 * limit:g}%")
            chosen = [p for p in points if p[0] == marks.recommended_tokens]
            if chosen:
                axis.plot(chosen[0][0], y(chosen[0][2]), "*", color="gold", markersize=16, markeredgecolor="black")
                axis.plot([], [], "*", color="gold", markeredgecolor="black", label="recommended export")
        _mark_tokens(axis, milestones, marks)
        _style(axis, axis.get_ylabel(), title, fontsize=8)
    return figure
