"""The run report: the paper's Table 1 (tokens x tasks, with Avg), the same table with each score's change against
the base model as the study prints it, and the figures (loss curve, benchmark scores with error bars, domain gain
against forgetting), as PNGs, a Markdown page and one self-contained HTML page (images inlined). Everything is
read from the run's storage; the guardrail, recommended export and budget segments come as Marks."""

from __future__ import annotations

import base64
import html
from dataclasses import replace
from typing import Any

from cpt_pipeline import jsonl
from cpt_pipeline.evaluate.results import load_summaries
from cpt_pipeline.report.figures import (
    TASK_TITLES,
    efficiency_figure,
    forgetting_figure,
    loss_figure,
    perplexity_changes,
    png,
    token_label,
)
from cpt_pipeline.report.marks import Marks, marks_from
from cpt_pipeline.storage import Storage

TABLE_TITLE = "Table 1: benchmark performance across token volumes (change vs the base model)"
__all__ = ["build_report", "table", "table_with_changes", "token_label"]
FILES = {
    "Training loss": "loss.png",
    "Token efficiency": "efficiency.png",
    "Domain gain and forgetting": "forgetting.png",
}


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


def _relative(value: float, base: float | None) -> str:
    """A change against the base as the study prints it (+8.1%), or a factor where a percentage hides it."""
    if base is None or base == 0:
        return ""
    if value < base / 10:
        return f" ({base / value:,.0f}x lower)"
    if value > base * 10:
        return f" ({value / base:,.0f}x higher)"
    return f" ({(value - base) / base:+.1%})"


def table_with_changes(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Table 1 with each score's and the average's change against the base model (its 0-token row), then domain
    and general perplexity with theirs where the run scored them."""
    header, rows = table(summaries)
    base = next((s for s in summaries if s["tokens"] == 0), None)
    tasks = [s["task"] for s in summaries[0]["scores"]]
    base_scores = {s["task"]: s["score"] for s in base["scores"]} if base else {}
    sets = [w for w in ("domain", "general") if perplexity_changes(summaries, w)]
    header = [*header, *(f"{w.capitalize()} PPL" for w in sets)]
    for summary, row in zip(summaries, rows, strict=True):
        if summary is not base:
            by_task = {s["task"]: s["score"] for s in summary["scores"]}
            for column, task in enumerate(tasks, start=1):
                if task in by_task:
                    row[column] += _relative(by_task[task], base_scores.get(task))
            if summary["average"] is not None and base and base["average"] is not None:
                row[len(tasks) + 1] += _relative(summary["average"], base["average"])
        for which in sets:
            change = next((c for t, p, c in perplexity_changes(summaries, which) if t == summary["tokens"]), None)
            perplexity = ((summary.get("perplexity") or {}).get(which) or {}).get("perplexity")
            cell = "-" if perplexity is None else f"{perplexity:,.0f}" if perplexity >= 1000 else f"{perplexity:.4g}"
            if perplexity is not None and change is not None and summary is not base:
                cell += _relative(perplexity, perplexity / (1 + change))
            row.append(cell)
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_page(name: str, header: list[str], rows: list[list[str]], images: dict[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, image in images.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1.5em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(name)}</h1>"
        f"<h2>{TABLE_TITLE}</h2><table><tr>{head}</tr>{body}</table>"
        f"{figures}</body></html>"
    )


def recommended_export(storage: Storage) -> str | None:
    """The export the forgetting guardrail recommends, as the evaluation stage judged it (eval/status.json)."""
    status = storage.read_json("eval", "status.json") if storage.exists("eval", "status.json") else {}
    return (status.get("guardrail") or {}).get("recommendedExport")


def build_report(
    storage: Storage, name: str = "Continued pre-training report", marks: Marks | None = None
) -> dict[str, Any]:
    """Write report/{index.html, report.md, table.md, loss.png, efficiency.png, forgetting.png}; returns where."""
    marks = marks or Marks()
    if marks.recommended_tokens is None:  # the guardrail's verdict, in storage where no status was given
        judged = marks_from(status={"recommendedExport": recommended_export(storage)})
        marks = replace(marks, recommended_tokens=judged.recommended_tokens)
    summaries = load_summaries(storage)
    if not summaries:
        raise FileNotFoundError(f"no evaluation results under {storage.url('eval')}: run the evaluate stage first")
    header, rows = table_with_changes(summaries)
    for summary, row in zip(summaries, rows, strict=True):
        if marks.recommended_tokens and summary.get("name") == f"tokens-{marks.recommended_tokens:013d}":
            row[0] += " ★ recommended"  # the last export within the forgetting guardrail
    history = []
    if storage.exists("train", "metrics.jsonl"):
        history = jsonl.records(storage.read_bytes("train", "metrics.jsonl"))
    milestones = [s["tokens"] for s in summaries if s["tokens"]]
    images = {"Training loss": png(loss_figure(history, milestones, marks))} if history else {}
    images["Token efficiency"] = png(efficiency_figure(summaries, marks))
    forgetting = forgetting_figure(summaries, marks)
    if forgetting is not None:
        images["Domain gain and forgetting"] = png(forgetting)
    out = storage.sub("report")
    for title, image in images.items():
        out.write_bytes(image, FILES[title])
    out.write_text(_markdown_table(*table(summaries)) + "\n", "table.md")
    markdown_table = _markdown_table(header, rows)
    figures_md = "\n\n".join(f"![{title}]({FILES[title]})" for title in images)
    out.write_text(f"# {name}\n\n## {TABLE_TITLE}\n\n{markdown_table}\n\n{figures_md}\n", "report.md")
    out.write_text(_html_page(name, header, rows, images), "index.html")
    return {"reportUri": out.url("index.html"), "rows": len(rows), "figures": sorted(FILES[t] for t in images)}
