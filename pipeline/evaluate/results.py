"""The evaluation stage: the base model and every milestone export, each written once to storage.

Per model: `eval/<name>/results.json` (lm-eval's results, configs and versions) and
`eval/<name>/summary.json` (chosen metric per task, average, perplexities). Then, for all models,
`eval/status.json` in the shape of `status.evaluation`: scores with deltas against the 0-token baseline,
per milestone, ascending. Each evaluation Job merges its view into the resource's `status.evaluation`
(`push_evaluation`), so the status holds every model any Job evaluated.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.evaluation import Guardrail
from cpt.guardrail import Measures, Verdict, budget_digest, judged_under, verdict
from cpt.stages import TRAINING_COMPLETE, export_name, verdict_path
from cpt_pipeline.evaluate.harness import TaskDataError
from cpt_pipeline.fetch import local_dir
from cpt_pipeline.hf_loading import check_remote_code, load_tokenizer
from cpt_pipeline.status_push import push_configured, push_merged_status
from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)
BASELINE = "baseline"


def targets(spec: ContinuedPretrainSpec, storage: Storage) -> list[tuple[str, int, str, str | None]]:
    """(name, tokens, model URI, hub revision) of every model to evaluate: the base model (at spec.model.revision,
    the weights training started from), then each complete export."""
    found: list[tuple[str, int, str, str | None]] = []
    if spec.evaluation.baseline:
        if spec.model.uri is None:
            log.info("no baseline: the model is built from an architecture (random init)")
        else:
            found.append((BASELINE, 0, spec.model.uri, spec.model.revision))
    if spec.evaluation.at_milestones:
        for name in storage.list("exports"):
            if name.startswith("tokens-") and storage.exists("exports", name, "export.json"):
                seen = storage.read_json("exports", name, "export.json").get("tokens")  # tokens actually trained
                found.append((name, int(seen or name.split("-", 1)[1]), storage.url("exports", name), None))
    return found


def check_milestone_exports(spec: ContinuedPretrainSpec, storage: Storage, complete: set[str]) -> None:
    """Once training has completed, every milestone (and the budget) must have a complete export: a missing
    one (an export that failed) would leave its row out of the table without a word."""
    if not spec.evaluation.at_milestones or not storage.exists(*TRAINING_COMPLETE):
        return
    trained = storage.read_json(*TRAINING_COMPLETE).get("tokens")  # a grown budget's are not trained yet
    due = [m for m in spec.data.milestones_with_budget if trained is None or m <= trained]
    missing = [m for m in due if export_name(m) not in complete]
    if missing:
        shown = ", ".join(f"{export_name(m)} ({m} tokens)" for m in missing)
        what = f"milestone {shown} has" if len(missing) == 1 else f"milestones {shown} have"
        raise FileNotFoundError(
            f"{what} no export in {storage.url('exports')} although training completed "
            f"({storage.url(*TRAINING_COMPLETE)}): its evaluation row would be missing; train again under a new "
            "spec.storage.uri"
        )


def summarize(
    name: str,
    tokens: int,
    model: str,
    task_scores: list[dict[str, Any]],
    perplexities: dict[str, Any],
    results_uri: str,
) -> dict[str, Any]:
    average = sum(s["score"] for s in task_scores) / len(task_scores) if task_scores else None
    return {
        "name": name,
        "tokens": tokens,
        "model": model,
        "scores": task_scores,
        "average": average,
        "perplexity": perplexities,
        "resultsUri": results_uri,
    }


def _task_data(uri: str) -> Path:
    try:
        return Path(local_dir(uri))
    except FileNotFoundError as error:
        raise TaskDataError(f"spec.evaluation.localTaskDir: {error}") from error


TARGETS = ("baseline", "milestones")  # or one export's name: what one evaluation Job of the operator covers


def _selected(name: str, target: str) -> bool:
    if target == "baseline":
        return name == BASELINE
    if target == "milestones":
        return name != BASELINE
    return name == target


def evaluate_run(
    spec: ContinuedPretrainSpec, storage: Storage, device: str | None = None, target: str | None = None
) -> dict[str, Any]:
    """Evaluate every model not evaluated yet (only the baseline, the milestone exports or one export, when
    `target` says so); returns (and writes) the status summary of everything evaluated so far."""
    from cpt_pipeline.evaluate.harness import run_tasks, scores
    from cpt_pipeline.evaluate.perplexity import evaluate_sets
    from cpt_pipeline.preprocess.held_out import HELD_OUT_PATH

    cfg = spec.evaluation
    local_data = _task_data(cfg.local_task_dir) if cfg.local_task_dir else None
    sets = {name: s for name, s in (("domain", cfg.perplexity.domain), ("general", cfg.perplexity.general)) if s}
    if "domain" in sets and sets["domain"].held_out:  # the documents preprocessing held out from training
        sets["domain"] = sets["domain"].model_copy(update={"uri": storage.url(*HELD_OUT_PATH)})
    found = targets(spec, storage)
    if target in (None, "milestones"):
        check_milestone_exports(spec, storage, {name for name, *_ in found})
    if target not in (None, *TARGETS) and target not in {name for name, *_ in found}:
        raise FileNotFoundError(
            f"--target {target}: no complete export {storage.url('exports', target)} (training writes it at its "
            "milestone; evaluation.atMilestones must be on)"
        )
    for name, tokens, model, revision in found:
        if target is not None and not _selected(name, target):
            continue
        if storage.exists("eval", name, "summary.json"):
            log.info("evaluation of %s exists, skipped", name)
            continue
        model_dir = str(local_dir(model, revision=revision))
        trust = spec.model.trust_remote_code
        check_remote_code(Path(model_dir), trust, model)
        tokenizer = trained_tokenizer(Path(model_dir), trust, storage)
        task_scores: list[dict[str, Any]] = []
        if cfg.tasks:
            results = run_tasks(
                model_dir,
                list(cfg.tasks),
                local_data,
                cfg.batch_size,
                device,
                tokenizer=tokenizer,
                trust_remote_code=trust,
            )
            storage.write_bytes(
                json.dumps(
                    {k: results[k] for k in ("results", "configs", "versions", "n-samples")}, indent=1, default=str
                ).encode(),
                "eval",
                name,
                "results.json",
            )
            task_scores = scores(results, list(cfg.tasks))
        window = cfg.perplexity.window_tokens or spec.data.sequence_length
        perplexities = evaluate_sets(model_dir, sets, device, cfg.batch_size, window, tokenizer, trust)
        summary = summarize(name, tokens, model, task_scores, perplexities, storage.url("eval", name, "results.json"))
        storage.write_json(summary, "eval", name, "summary.json")
        log.info("evaluated %s (%d tokens): average %s", name, tokens, summary["average"])
        event = {"event": "evaluated", "name": name, "tokens": tokens, "average": summary["average"]}
        print(json.dumps(event), flush=True)
    if cfg.guardrail is not None and unjudged(storage, cfg.guardrail):
        wait_for_baseline(storage)
    summaries = load_summaries(storage)
    status = status_summary(summaries, cfg.guardrail)
    storage.write_json(status, "eval", "status.json")
    pushed = push_evaluation(summaries, target, cfg.guardrail)
    if cfg.guardrail is not None:  # after the push: training stopped by a verdict finds it in status already
        if not pushed and push_configured():
            raise StatusPushFailed(
                "the status push failed (logged above): the guardrail's verdict is not in status, so "
                f"{storage.url('eval', '<export>', 'guardrail.json')} is not written; the Job retries"
            )
        write_verdicts(storage, summaries, cfg.guardrail)
    return status


class StatusPushFailed(ConnectionError):
    """On a cluster, the verdict did not reach status: the operator could not act on it (exit 5, retried)."""


BASELINE_POLL_SECONDS = 10.0


def unjudged(storage: Storage, guardrail: Guardrail) -> list[str]:
    """Evaluated milestone exports without a guardrail verdict under this budget yet (none, or one judged under
    another budget: the run re-created on the same storage with its budget changed)."""
    return [
        n
        for n in sorted(storage.list("eval"))
        if n != BASELINE
        and storage.exists("eval", n, "summary.json")
        and not (storage.exists(*verdict_path(n)) and judged_under(storage.read_json(*verdict_path(n)), guardrail))
    ]


def wait_for_baseline(storage: Storage, poll: float = BASELINE_POLL_SECONDS) -> None:
    """A milestone's verdict needs the base model's results: an evaluation Job that finished its milestone before
    the baseline Job (which runs alongside) waits for it."""
    if not storage.exists("eval", BASELINE, "summary.json"):
        log.info("guardrail: waiting for the base model's evaluation (%s)", storage.url("eval", BASELINE))
    while not storage.exists("eval", BASELINE, "summary.json"):
        time.sleep(poll)


def write_verdicts(storage: Storage, summaries: list[dict[str, Any]], guardrail: Guardrail) -> None:
    """`eval/<export>/guardrail.json` for each milestone without one under this budget: the verdict over it and
    the milestones before it, with the budget's digest. A breach is logged and printed as an event."""
    for name in unjudged(storage, guardrail):
        summary = next(s for s in summaries if s.get("name") == name)
        found = guardrail_verdict([s for s in summaries if s["tokens"] <= summary["tokens"]], guardrail)
        if found is None:
            continue
        verdict_json = {**found.to_status(), "action": guardrail.action, "budgetDigest": budget_digest(guardrail)}
        if found.breached:
            log.warning("%s (guardrail action: %s)", found.message, guardrail.action)
            print(json.dumps({"event": "guardrail", "name": name, **verdict_json}), flush=True)
        storage.write_json(verdict_json, *verdict_path(name))


def trained_tokenizer(model_dir: Path, trust_remote_code: bool, storage: Storage) -> Any:
    """The model's tokenizer, encoding as training's shards were encoded: with the backend preprocessing chose
    (SentencePiece or fast; recorded in the domain manifest) when the manifest's tokenizer is this one, else with
    the backend preprocessing would choose for it."""
    from cpt_pipeline.preprocess.tokenize import TextTokenizer

    info = TextTokenizer(str(model_dir), trust_remote_code=trust_remote_code).info
    manifest = (
        storage.read_json("data", "domain", "manifest.json")
        if storage.exists("data", "domain", "manifest.json")
        else {}
    )
    recorded = manifest.get("tokenizer", {})
    backend = recorded["backend"] if recorded.get("fingerprint") == info.fingerprint else info.backend
    return load_tokenizer(model_dir, trust_remote_code, sentencepiece=backend == "sentencepiece")


def push_evaluation(summaries: list[dict[str, Any]], target: str | None, guardrail: Guardrail | None = None) -> bool:
    """Merge these summaries into `status.evaluation` as the server has it (concurrent evaluation Jobs each
    listed storage at their own time: a late push of an older view keeps every entry a newer one pushed), under
    a field manager per Job."""
    manager = f"kubecpt-evaluate-{target}" if target else "kubecpt-evaluate"

    def merge(current: dict[str, Any]) -> dict[str, Any]:
        merged = merge_summaries(summaries_from_status(current.get("evaluation")), summaries)
        out: dict[str, Any] = {"evaluation": status_summary(merged, guardrail)}
        found = guardrail_verdict(merged, guardrail)
        if found is not None and found.recommended:
            out["recommendedExport"] = found.recommended
        return out

    return push_merged_status(manager, merge)


def merge_summaries(older: list[dict[str, Any]], newer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model in either list, one summary each (`newer`'s, read from storage, wins), ascending by tokens."""
    by_tokens = {s["tokens"]: s for s in older} | {s["tokens"]: s for s in newer}
    return [by_tokens[tokens] for tokens in sorted(by_tokens)]


def summaries_from_status(evaluation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The summaries a `status.evaluation` was made from, as far as `status_summary` reads them: it is their
    function, so the deltas and the latest average are recomputed over the merged set."""
    found = []
    for milestone in (evaluation or {}).get("milestones", []):
        perplexity = {
            kind: {"perplexity": milestone[f"{kind}Perplexity"]}
            for kind in ("domain", "general")
            if milestone.get(f"{kind}Perplexity") is not None
        }
        found.append(
            {
                "name": milestone.get("export") or model_name(milestone["tokens"]),
                "tokens": milestone["tokens"],
                "scores": [{k: v for k, v in s.items() if k != "delta"} for s in milestone.get("scores", [])],
                "average": milestone.get("average"),
                "perplexity": perplexity,
                "resultsUri": milestone.get("resultsUri"),
            }
        )
    return found


def load_summaries(storage: Storage) -> list[dict[str, Any]]:
    """Every summary in storage, ascending by tokens."""
    found = [
        storage.read_json("eval", n, "summary.json")
        for n in storage.list("eval")
        if storage.exists("eval", n, "summary.json")
    ]
    return sorted(found, key=lambda s: s["tokens"])


def status_summary(summaries: list[dict[str, Any]], guardrail: Guardrail | None = None) -> dict[str, Any]:
    """`status.evaluation`: milestones with per-task deltas against the 0-token baseline, the latest average, and
    with a guardrail its verdict (once the base model is evaluated)."""
    base = next((s for s in summaries if s["tokens"] == 0), None)
    base_scores = {s["task"]: s["score"] for s in base["scores"]} if base else {}
    milestones = []
    for summary in summaries:
        task_scores = [
            {**s, "delta": (s["score"] - base_scores[s["task"]]) if s["task"] in base_scores else None}
            for s in summary["scores"]
        ]
        ppl = summary.get("perplexity", {})
        milestones.append(
            {
                "tokens": summary["tokens"],
                **({"export": summary["name"]} if summary["tokens"] > 0 and summary.get("name") else {}),
                "scores": task_scores,
                "average": summary["average"],
                "averageDelta": (summary["average"] - base["average"])
                if base and summary["average"] is not None and base["average"] is not None
                else None,
                "domainPerplexity": ppl.get("domain", {}).get("perplexity"),
                "generalPerplexity": ppl.get("general", {}).get("perplexity"),
                "resultsUri": summary.get("resultsUri"),
            }
        )
    latest = next((m["average"] for m in reversed(milestones) if m["average"] is not None), None)
    out = {
        "milestones": milestones,
        "latestAverage": latest,
        "latestDomainPerplexityChange": latest_change(milestones, "domainPerplexity"),
        "latestGeneralPerplexityChange": latest_change(milestones, "generalPerplexity"),
    }
    found = guardrail_verdict(summaries, guardrail)
    if found is not None:
        out["guardrail"] = found.to_status()
    return out


def model_name(tokens: int) -> str:
    """The name of the model trained on `tokens` (entries pushed before they carried their export's name)."""
    return BASELINE if tokens == 0 else export_name(tokens)


def measures(summary: dict[str, Any]) -> Measures:
    """What the guardrail reads of one summary."""
    general = (summary.get("perplexity") or {}).get("general") or {}
    return Measures(
        summary.get("name") or model_name(summary["tokens"]),
        summary["tokens"],
        general.get("perplexity"),
        {s["task"]: s["score"] for s in summary.get("scores", [])},
    )


def guardrail_verdict(summaries: list[dict[str, Any]], guardrail: Guardrail | None) -> Verdict | None:
    """The guardrail's verdict over these summaries (None without a guardrail or before the base model)."""
    return None if guardrail is None else verdict(guardrail, [measures(s) for s in summaries])


def latest_change(milestones: list[dict[str, Any]], field: str) -> float | None:
    """The latest trained model's perplexity against the base model's, as a share of the base's (-0.35 = 35%
    lower; what `cpt compare` prints): None until both are known."""
    base = next((m[field] for m in milestones if m["tokens"] == 0 and m[field]), None)
    latest = next((m[field] for m in reversed(milestones) if m["tokens"] > 0 and m[field] is not None), None)
    return None if base is None or latest is None else round((latest - base) / base, 6)
