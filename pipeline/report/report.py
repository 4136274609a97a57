"""The run report: the paper's Table 1 (tokens x tasks, with Avg), the loss curve and the token-efficiency
figure (task scores and held-out perplexity against tokens), as PNGs, a Markdown page and one
self-contained HTML page (images inlined). Everything is read from the run's storage."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from cpt_pipeline import jsonl
from cpt_pipeline.evaluate.results import load_summaries
from cpt_pipeline.storage import Storage

TASK_TITLES = {
    "mmlu": "MMLU",
    "arc_challenge": "ARC Ch.",
    "arc_easy": "ARC Easy",
    "winogrande": "Winogr.",
    "hellaswag": "H.Swag",
    "boolq": "BoolQ",
    "piqa": "PIQA",
}


def token_label(tokens: int) -> str:
    if tokens == 0:
        return "0 (Base)"
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if tokens >= size:
            return f"≈ {tokens / size:.3g}{suffix}"
    return str(tokens)


def table(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 1: one row per evaluated model, one column per task, then Avg."""
    tasks = [s["task"] for s in summaries[0]["scores"]] if summaries else []
    header = ["CPT Tokens", *(TASK_TITLES.get(t, t) for t in tasks), "Avg"]
    rows = []
    for summary in summaries:
        by_task = {s["task"]: s["score"] for s in summary["scores"]}
        cells = [f"{by_task[t]:.4f}" if t in by_task else "-" for t in tasks]
        average = summary["average"]
        rows.append([token_label(summary["tokens"]), *cells, "-" if average is None else f"{average:.4f}"])
    return header, rows


def _token_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: token_label(int(x)).removeprefix("≈ ") if x > 0 else "0"))
    axis.set_xlabel("training tokens")


def _style(axis: Any, ylabel: str, title: str, **legend: Any) -> None:
    _token_axis(axis)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(**legend)


def _png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def loss_figure(history: list[dict[str, Any]], milestones: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    points = [(r["tokens"], r["loss"]) for r in history if r.get("loss") is not None]
    axis.plot([p[0] for p in points], [p[1] for p in points], color="#1f77b4", linewidth=1.2, label="training loss")
    for milestone in milestones:
        axis.axvline(milestone, color="#999999", linestyle="--", linewidth=0.8)
        axis.annotate(token_label(milestone), (milestone, axis.get_ylim()[1]), fontsize=8, ha="right", va="top")
    _style(axis, "loss", "Training loss")
    return _png(figure)


def efficiency_figure(summaries: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_ppl = any(s.get("perplexity") for s in summaries)
    figure, axes = plt.subplots(1, 2 if with_ppl else 1, figsize=(12 if with_ppl else 7, 4.5), squeeze=False)
    tokens = [s["tokens"] for s in summaries]
    tasks = [s["task"] for s in summaries[0]["scores"]] if summaries else []
    scores_axis = axes[0][0]
    for task in tasks:
        values = [next((x["score"] for x in s["scores"] if x["task"] == task), float("nan")) for s in summaries]
        scores_axis.plot(tokens, values, marker="o", linewidth=1, label=TASK_TITLES.get(task, task))
    averages = [s["average"] if s["average"] is not None else float("nan") for s in summaries]
    scores_axis.plot(tokens, averages, marker="s", color="black", linewidth=2.2, label="Avg")
    _style(
        scores_axis,
        "score",
        "Benchmark scores vs tokens",
        fontsize=8,
        ncol=4,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
    )
    if with_ppl:
        ppl_axis = axes[0][1]
        for name, color in (("domain", "#2ca02c"), ("general", "#d62728")):
            values = [s.get("perplexity", {}).get(name, {}).get("perplexity", float("nan")) for s in summaries]
            if any(v == v for v in values):  # a set that was configured (NaN != NaN)
                ppl_axis.plot(tokens, values, marker="o", color=color, label=f"{name} (held-out)")
        _style(ppl_axis, "perplexity (lower is better)", "Domain gain and forgetting")
    return _png(figure)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_page(name: str, header: list[str], rows: list[list[str]], images: dict[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, png in images.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1.5em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(name)}</h1>"
        f"<h2>Table 1: benchmark performance across token volumes</h2><table><tr>{head}</tr>{body}</table>"
        f"{figures}</body></html>"
    )


def build_report(storage: Storage, name: str = "Continued pre-training report") -> dict[str, Any]:
    """Write report/{index.html, report.md, table.md, loss.png, efficiency.png}; returns where they are."""
    summaries = load_summaries(storage)
    if not summaries:
        raise FileNotFoundError(f"no evaluation results under {storage.url('eval')}: run the evaluate stage first")
    header, rows = table(summaries)
    history = []
    if storage.exists("train", "metrics.jsonl"):
        history = jsonl.records(storage.read_bytes("train", "metrics.jsonl"))
    images = {}
    if history:
        images["Training loss"] = loss_figure(history, [s["tokens"] for s in summaries if s["tokens"]])
    images["Token efficiency"] = efficiency_figure(summaries)
    out = storage.sub("report")
    files = {"Training loss": "loss.png", "Token efficiency": "efficiency.png"}
    for title, png in images.items():
        out.write_bytes(png, files[title])
    markdown_table = _markdown_table(header, rows)
    out.write_text(markdown_table + "\n", "table.md")
    figures_md = "\n\n".join(f"![{title}]({files[title]})" for title in images)
    out.write_text(
        f"# {name}\n\n## Table 1: benchmark performance across token volumes\n\n{markdown_table}\n\n{figures_md}\n",
        "report.md",
    )
    out.write_text(_html_page(name, header, rows, images), "index.html")
    return {"reportUri": out.url("index.html"), "rows": len(rows), "figures": sorted(files[t] for t in images)}
