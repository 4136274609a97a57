"""`cpt compare`: several runs' evaluations side by side, and the frontier of domain gain against forgetting.

Reads what the evaluate stage writes into each run's storage, `eval/<model>/summary.json` (tokens, benchmark
scores, domain and general perplexity), from local folders, or a run's `status.evaluation` as the API server has
it (runs listed on a cluster by label). Changes are relative to the run's base model (its 0-token evaluation).
A run is given as its storage folder or as its ContinuedPretrain YAML (then the replay fraction is known and the
storage is spec.storage.uri).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpt.validation import load_documents, validate_object


class CompareError(ValueError):
    """A run that cannot be compared; the message is one line naming the file or folder."""


@dataclass
class Run:
    """One run's evaluations, ascending by tokens."""

    name: str
    storage: Path | None
    replay: str | None
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def base(self) -> dict[str, Any] | None:
        return next((s for s in self.summaries if s["tokens"] == 0), None)


@dataclass(frozen=True)
class Point:
    """One run at one milestone: domain gain (perplexity fall, a share of the base's) against forgetting
    (general perplexity rise, a share of the base's)."""

    run: str
    replay: str | None
    tokens: int
    gain: float
    forgetting: float


def _local(uri: str, source: str) -> Path:
    if uri.startswith(("s3://", "gs://")):
        raise CompareError(f"{source}: storage {uri} is not local: cpt compare reads local folders")
    return Path(uri.removeprefix("file://"))


def _from_yaml(path: Path) -> Run:
    documents = load_documents(path)
    if len(documents) != 1:
        raise CompareError(f"{path}: expected one ContinuedPretrain, found {len(documents)} documents")
    resource, problems = validate_object(documents[0][1], str(path))
    if resource is None:
        raise CompareError(str(problems[0]))
    replay = resource.spec.data.replay
    fraction = "0" if replay is None else str(replay.fraction)
    name = resource.metadata.get("name") or path.stem
    return Run(name, _local(resource.spec.storage.uri, str(path)), fraction)


def _from_status(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Summaries from `status.evaluation.milestones` (what the evaluation Jobs pushed), ascending by tokens."""
    found = []
    for milestone in evaluation.get("milestones") or []:
        perplexity = {
            which: {"perplexity": milestone[f"{which}Perplexity"]}
            for which in ("domain", "general")
            if milestone.get(f"{which}Perplexity") is not None
        }
        found.append(
            {
                "tokens": int(milestone["tokens"]),
                "scores": milestone.get("scores") or [],
                "average": milestone.get("average"),
                "perplexity": perplexity,
            }
        )
    return sorted(found, key=lambda s: s["tokens"])


def run_from_resource(resource: dict[str, Any], qualified: bool = False) -> Run:
    """A run as the API server has it: its evaluations from status.evaluation, else from spec.storage.uri when
    that is a local folder. Named `namespace/name` when `qualified` (runs listed from several namespaces)."""
    metadata, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    name = f"{metadata.get('namespace', '')}/{metadata.get('name', '?')}".lstrip("/")
    fraction = ((spec.get("data") or {}).get("replay") or {}).get("fraction")
    run = Run(name if qualified else metadata.get("name", "?"), None, "0" if fraction is None else str(fraction))
    run.summaries = _from_status((resource.get("status") or {}).get("evaluation") or {})
    if not run.summaries:
        uri = (spec.get("storage") or {}).get("uri", "")
        if uri.startswith(("s3://", "gs://")) or not uri:
            raise CompareError(f"ContinuedPretrain {name}: no status.evaluation yet and storage {uri!r} is not local")
        run.storage = _local(uri, f"ContinuedPretrain {name}")
        run.summaries = _summaries(run)
    return run


def _summaries(run: Run) -> list[dict[str, Any]]:
    assert run.storage is not None
    found = []
    for file in sorted((run.storage / "eval").glob("*/summary.json")):
        try:
            summary = json.loads(file.read_text(encoding="utf-8"))
            int(summary["tokens"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CompareError(f"{file}: not an evaluation summary ({error})") from error
        found.append(summary)
    if not found:
        raise CompareError(f"{run.storage}: no evaluation summaries (eval/*/summary.json): run the evaluate stage")
    return sorted(found, key=lambda s: s["tokens"])


def load_run(arg: str) -> Run:
    """A run from its ContinuedPretrain YAML or its storage folder."""
    path = Path(arg)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        run = _from_yaml(path)
    elif path.is_dir():
        run = Run(path.name, path, None)
    else:
        raise CompareError(f"{arg}: neither a run's storage folder nor a ContinuedPretrain YAML file")
    run.summaries = _summaries(run)
    return run


def _perplexity(summary: dict[str, Any] | None, which: str) -> float | None:
    value = ((summary or {}).get("perplexity") or {}).get(which, {}).get("perplexity")
    return float(value) if value else None


def change(run: Run, summary: dict[str, Any], which: str) -> float | None:
    """Perplexity change against the base model, as a share of the base's (-0.35 = 35% lower)."""
    base, now = _perplexity(run.base(), which), _perplexity(summary, which)
    return None if base is None or now is None else (now - base) / base


def change_text(value: float | None) -> str:
    """A change as a share (+0.095 = 9.5% higher), or as a factor where the perplexity moved over 10-fold (a
    percentage would hide how much: -99.99% and -99.9% look alike, +9311062% is unreadable)."""
    if value is None:
        return "-"
    ratio = 1 + value
    if ratio >= 10:
        return f"{ratio:,.0f}x higher"
    if ratio <= 0.1:
        return f"{1 / ratio:,.0f}x lower" if ratio > 0 else "-100%"
    return f"{value:+.1%}"


def _tasks(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(s["task"] for run in runs for summary in run.summaries for s in summary["scores"]))


def table(runs: list[Run]) -> list[list[str]]:
    """Header and rows: run x tokens with each benchmark, their average and both perplexity changes."""
    tasks = _tasks(runs)
    rows = [["run", "replay", "tokens", *tasks, "benchmarks avg", "domain ppl change", "general ppl change"]]
    for run in runs:
        for s in run.summaries:
            by_task = {x["task"]: x["score"] for x in s["scores"]}
            scores = [f"{by_task[t]:.4f}" if t in by_task else "-" for t in tasks]
            average = "-" if s.get("average") is None else f"{s['average']:.4f}"
            domain, general = change(run, s, "domain"), change(run, s, "general")
            rows.append(
                [
                    run.name,
                    run.replay or "?",
                    f"{s['tokens']:,}",
                    *scores,
                    average,
                    change_text(domain),
                    change_text(general),
                ]
            )
    return rows


def points(runs: list[Run]) -> list[Point]:
    """One point per run and milestone (tokens > 0) that has both perplexities and a base to compare with."""
    found = []
    for run in runs:
        for s in run.summaries:
            domain, general = change(run, s, "domain"), change(run, s, "general")
            if s["tokens"] > 0 and domain is not None and general is not None:
                found.append(Point(run.name, run.replay, s["tokens"], -domain, general))
    return found


def pareto(found: list[Point]) -> set[Point]:
    """Points no other point beats: at least as much gain with at most as much forgetting, one strictly."""

    def beaten(p: Point) -> bool:
        return any(
            q.gain >= p.gain and q.forgetting <= p.forgetting and (q.gain > p.gain or q.forgetting < p.forgetting)
            for q in found
        )

    return {p for p in found if not beaten(p)}


def render(runs: list[Run]) -> str:
    """The table, then the frontier as text (best trade-offs marked with *)."""
    rows = table(runs)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    found = points(runs)
    best = pareto(found)
    lines += ["", "Frontier: domain gain (perplexity fall vs base) against forgetting (general perplexity rise)"]
    if not found:
        lines.append("  no milestone has both domain and general perplexity and a base evaluation")
    for p in sorted(found, key=lambda p: (p.forgetting, -p.gain)):
        mark = "*" if p in best else " "
        replay = f"replay {p.replay}" if p.replay is not None else "replay ?"
        lines.append(
            f"{mark} {p.run}  ({replay}, {p.tokens:,} tokens): domain ppl {change_text(-p.gain)}, "
            f"general ppl {change_text(p.forgetting)}"
        )
    if found:
        lines.append("* Pareto-optimal: no other point has at least as much gain with at most as much forgetting")
    return "\n".join(lines) + "\n"
