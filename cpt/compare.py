"""`cpt compare`: several runs' evaluations side by side, and the frontier of domain gain against forgetting.

Reads what the evaluate stage writes into each run's storage, `eval/<model>/summary.json` (tokens, benchmark
average, domain and general perplexity), from local folders. Changes are relative to the run's base model
(its 0-token evaluation). A run is given as its storage folder or as its ContinuedPretrain YAML (then the
replay fraction is known and the storage is spec.storage.uri).
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
    storage: Path
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


def _summaries(run: Run) -> list[dict[str, Any]]:
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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def table(runs: list[Run]) -> list[list[str]]:
    """Header and rows: run x tokens with the benchmark average and both perplexity changes."""
    rows = [["run", "replay", "tokens", "benchmarks avg", "domain ppl change", "general ppl change"]]
    for run in runs:
        for s in run.summaries:
            average = "-" if s.get("average") is None else f"{s['average']:.4f}"
            domain, general = change(run, s, "domain"), change(run, s, "general")
            rows.append([run.name, run.replay or "?", f"{s['tokens']:,}", average, _percent(domain), _percent(general)])
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
            f"{mark} {p.run}  ({replay}, {p.tokens:,} tokens): gain {p.gain:+.1%}, forgetting {p.forgetting:+.1%}"
        )
    if found:
        lines.append("* Pareto-optimal: no other point has at least as much gain with at most as much forgetting")
    return "\n".join(lines) + "\n"
