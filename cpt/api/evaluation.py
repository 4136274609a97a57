"""`spec.evaluation`: lm-eval tasks, held-out perplexity sets, and when to evaluate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt.api.base import MAX_LIST, ApiModel, Rule, Uri, decimal, section

# The reference study's seven tasks, zero-shot, with the metric reported per task.
PAPER_TASKS: tuple[tuple[str, str], ...] = (
    ("mmlu", "acc"),
    ("arc_challenge", "acc_norm"),
    ("arc_easy", "acc_norm"),
    ("winogrande", "acc"),
    ("hellaswag", "acc_norm"),
    ("boolq", "acc"),
    ("piqa", "acc_norm"),
)


class Task(ApiModel):
    """One lm-evaluation-harness task."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$", description="lm-eval task name.")
    num_fewshot: int = Field(0, ge=0, le=64, description="Few-shot examples (pinned for comparability).")
    metric: Literal["acc", "acc_norm", "exact_match", "f1", "mcc", "word_perplexity"] = Field(
        "acc", description="Metric reported for this task."
    )
    limit: int | None = Field(None, ge=1, le=10**7, description="Evaluate at most this many examples.")
    filter: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description='lm-eval filter whose value is reported (e.g. "strict-match"); default: "none" when the '
        "task reports it, else the task's first filter.",
    )


def _paper_tasks() -> list[Task]:
    return [Task(name=name, metric=metric) for name, metric in PAPER_TASKS]


class TextSet(ApiModel):
    """Raw held-out text for perplexity: files (`uri`), or for the domain set a share of spec.data.sources
    held out from training (`heldOut`)."""

    uri: Uri | None = Field(None, description="jsonl/parquet/txt file(s) (local, s3://, gs://).")
    held_out: decimal(gt=0, lt=1) | None = Field(
        None,
        description="Domain set only: share of the domain documents (spec.data.sources) held out from training "
        'and scored here, e.g. "0.02". Chosen by a hash of the text, so the split is deterministic and copies '
        "of a held-out document are held out too; held-out documents never reach a shard.",
    )
    text_field: str = Field("text", min_length=1, max_length=256, description="Field with the text (jsonl/parquet).")
    max_documents: int = Field(1000, ge=1, le=10**7, description="Use at most this many documents.")

    rules = (
        Rule(
            cel="has(self.uri) != has(self.heldOut)",
            message="give either uri or heldOut",
            field="uri",
            check=lambda t: (t.uri is None) != (t.held_out is None),
        ),
    )


class Perplexity(ApiModel):
    """Held-out text sets: the domain gain and the forgetting signal."""

    domain: TextSet | None = Field(
        None, description="Held-out domain text: files, or heldOut (a share of the domain sources)."
    )
    general: TextSet | None = Field(
        None, description="Held-out general text (forgetting): files from the base model's own distribution."
    )
    window_tokens: int | None = Field(
        None,
        ge=2,
        le=1048576,
        description="Tokens per scored window (default: data.sequenceLength, the context the model is trained "
        "at), capped by the model's context length.",
    )

    rules = (
        Rule(
            cel="!has(self.general) || !has(self.general.heldOut)",
            message="heldOut applies to the domain set; give the general set's files in uri",
            field="general",
            check=lambda p: p.general is None or p.general.held_out is None,
        ),
    )

    @property
    def domain_held_out(self) -> float:
        """The share of domain documents held out from training (0: none)."""
        return float(self.domain.held_out) if self.domain is not None and self.domain.held_out else 0.0


class GeneralBudget(ApiModel):
    """How much the held-out general perplexity may rise above the base model's."""

    max_increase: decimal(ge=0) = Field(
        description='Largest allowed rise of general perplexity, as a share of the base model\'s (e.g. "0.10": '
        "10% above it)."
    )


class BenchmarkBudget(ApiModel):
    """How far one benchmark's score may drop below the base model's."""

    task: str = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$", description="A task of evaluation.tasks."
    )
    max_drop: decimal(ge=0) = Field(
        description="Largest allowed drop of the task's score below the base model's, in the metric's own units "
        '(e.g. "0.05": 5 points of accuracy).'
    )


class Guardrail(ApiModel):
    """A forgetting budget, checked at every milestone evaluation while training goes on."""

    general: GeneralBudget | None = Field(None, description="Budget on held-out general perplexity.")
    benchmarks: list[BenchmarkBudget] = Field(
        default_factory=list, max_length=MAX_LIST, description="Benchmarks that must not drop by more than a margin."
    )
    action: Literal["warn", "stop"] = Field(
        "warn",
        description="On a breach: warn (a condition and a Warning Event; training goes on) or stop (training waits "
        "for each milestone's verdict, and a breach ends the run with reason ForgettingBudgetExceeded).",
    )
    verdict_timeout_seconds: int = Field(
        3600,
        ge=60,
        description="Action stop: how long training waits for a milestone's verdict; past it training goes on (a "
        "breach found later still ends the run). The wait holds the gang's GPUs: the quota must fit the gang plus "
        "one evaluation pod.",
    )

    rules = (
        Rule(
            cel="has(self.general) || size(self.benchmarks) > 0",
            message="give a general budget, benchmarks, or both",
            field="general",
            check=lambda g: g.general is not None or bool(g.benchmarks),
        ),
    )


def _guarded_tasks_exist(evaluation: EvaluationSpec) -> bool:
    guardrail = evaluation.guardrail
    return guardrail is None or {b.task for b in guardrail.benchmarks} <= {t.name for t in evaluation.tasks}


class EvaluationSpec(ApiModel):
    """Benchmarks and perplexity, run on the base model and on every milestone."""

    tasks: list[Task] = Field(
        default_factory=_paper_tasks, max_length=MAX_LIST, description="lm-eval tasks (default: the paper's 7)."
    )
    perplexity: Perplexity = section(Perplexity, "Held-out perplexity sets.")
    baseline: bool = Field(True, description="Evaluate the base model before training (the 0-token row).")
    at_milestones: bool = Field(True, description="Evaluate every milestone checkpoint.")
    local_task_dir: Uri | None = Field(
        None, description="Directory of lm-eval task YAMLs reading local files (offline clusters)."
    )
    batch_size: str = Field("auto", pattern=r"^(auto|[1-9][0-9]*)$", description='"auto" or an integer.')
    guardrail: Guardrail | None = Field(
        None, description="Forgetting budget against the base model, checked at every milestone evaluation."
    )

    rules = (
        Rule(
            cel="self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
            message="task names must be unique",
            field="tasks",
            check=lambda e: len({t.name for t in e.tasks}) == len(e.tasks),
        ),
        Rule(
            cel="!has(self.guardrail) || self.guardrail.benchmarks.all(b, self.tasks.exists(t, t.name == b.task))",
            message="every guardrail benchmark must be a task of evaluation.tasks",
            field="guardrail.benchmarks",
            check=_guarded_tasks_exist,
        ),
        Rule(
            cel="!has(self.guardrail) || !has(self.guardrail.general) || has(self.perplexity.general)",
            message="guardrail.general needs the general perplexity set (evaluation.perplexity.general)",
            field="guardrail.general",
            check=lambda e: e.guardrail is None or e.guardrail.general is None or e.perplexity.general is not None,
        ),
        Rule(
            cel="self.baseline || self.atMilestones",
            message="baseline and atMilestones are both false: nothing would be evaluated and the report would have "
            "no row; set one of them true",
            field="atMilestones",
            check=lambda e: e.baseline or e.at_milestones,
        ),
        Rule(
            cel="!has(self.guardrail) || (self.baseline && self.atMilestones)",
            message="guardrail compares each milestone with the base model: it needs baseline and atMilestones",
            field="guardrail",
            check=lambda e: e.guardrail is None or (e.baseline and e.at_milestones),
        ),
    )
