"""What `cpt run` shows while the stages run, and the run's logs.

Every line a stage prints (JSON events, log lines, third-party output) goes to `logs/<stage>.log` in the
run's storage, not to the screen. The screen gets, per stage, what a person follows: on a terminal a live
`rich` display (stage, documents/s, tokens, step, loss, tokens/s, ETA), otherwise plain lines at most every
few seconds; then one line when the stage ends. When a stage fails, the last lines of its log are shown.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

PLAIN_INTERVAL_SECONDS = 10.0
TAIL_LINES = 25


@dataclass
class StageState:
    """What is known about the running stage, from its JSON events."""

    name: str
    started: float = field(default_factory=time.monotonic)
    docs: dict[str, int] = field(default_factory=dict)  # documents read, by worker
    tokens: dict[str, int] = field(default_factory=dict)  # tokens written, by worker
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    eta: str | None = None
    evaluated: list[str] = field(default_factory=list)
    result: str = ""  # from the stage's closing JSON line
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def update(self, event: dict[str, Any]) -> bool:
        """Take one JSON event in; True when it changed what is shown."""
        kind = event.get("event")
        if kind == "preprocess_progress":
            worker = f"{event.get('set')}/{event.get('rank')}"
            self.docs[worker] = int(event.get("docs", 0))
            self.tokens[worker] = int(event.get("tokens", 0))
        elif kind == "train_step":
            self.step = int(event.get("step", 0))
            self.total_steps = event.get("totalSteps")
            self.loss = event.get("loss")
            self.tokens_per_second = event.get("tokensPerSecond")
            self.eta = event.get("eta")
        elif kind == "evaluated":
            self.evaluated.append(f"{event.get('name')} (average {_score(event.get('average'))})")
        elif event.get("stage") == "preprocess":  # a worker's totals over every set replace its progress events
            suffix = f"/{event.get('rank')}"
            self.docs = {k: v for k, v in self.docs.items() if not k.endswith(suffix)}
            self.tokens = {k: v for k, v in self.tokens.items() if not k.endswith(suffix)}
            self.docs["total" + suffix] = int(event.get("docs_read", 0))
            self.tokens["total" + suffix] = int(event.get("tokens", 0))
        elif event.get("stage") == "dedup":
            dropped = sum(event.get("docsDropped", {}).values())
            self.result = (
                f"{event.get('docsKept', 0):,} of {event.get('docsRead', 0):,} documents kept ({dropped:,} filtered, "
                f"{event.get('duplicates', 0):,} duplicates, {event.get('contaminated', 0):,} contaminated, "
                f"{event.get('heldOut', 0):,} held out), {event.get('tokens', 0):,} domain and "
                f"{event.get('replayTokens', 0):,} replay tokens in {event.get('shards', 0)} shards"
            )
        elif event.get("stage") == "report":
            self.result = f"report at {event.get('reportUri')}"
        else:
            return False
        return True

    def describe(self) -> str:
        """One line: the stage's progress so far."""
        seconds = max(time.monotonic() - self.started, 1e-9)
        if self.total_steps:
            loss = "n/a" if self.loss is None else f"{self.loss:.4f}"
            rate = f"{self.tokens_per_second:,.0f}" if self.tokens_per_second else "n/a"
            return (
                f"step {self.step}/{self.total_steps} ({self.step / self.total_steps:.0%}), loss {loss}, "
                f"{rate} tokens/s, ETA {self.eta or 'n/a'}"
            )
        if self.docs:
            docs = sum(self.docs.values())
            return f"{docs:,} documents read ({docs / seconds:,.0f}/s), {sum(self.tokens.values()):,} tokens"
        if self.evaluated:
            return "evaluated " + ", ".join(self.evaluated)
        return f"running for {seconds:.0f}s"


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON object on this line, if it is one."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Console:
    """Shows stage progress: live (rich) on a terminal, plain lines otherwise. Thread-safe: every worker
    process of a stage has a reader thread calling `line`."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.lock = threading.Lock()
        self.state: StageState | None = None
        self._last_plain = 0.0
        self._progress: Any = None
        self._task: Any = None

    def start(self, stage: str) -> None:
        self.state = StageState(stage)
        self._last_plain = time.monotonic()
        if self.live:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=RichConsole(file=self.out),
            )
            self._task = self._progress.add_task(stage, total=None, info="starting")
            self._progress.start()
        else:
            print(f"== {stage}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        """One line a stage printed (already in its log)."""
        with self.lock:
            state = self.state
            if state is None:
                return
            state.tail.append(text.rstrip("\n"))
            event = parse_event(text)
            if event is None or not state.update(event):
                return
            if self.live:
                total = state.total_steps
                self._progress.update(self._task, total=total, completed=state.step or None, info=state.describe())
            elif time.monotonic() - self._last_plain >= PLAIN_INTERVAL_SECONDS or (
                state.total_steps and state.step == state.total_steps
            ):
                self._last_plain = time.monotonic()
                print(f"{state.name}: {state.describe()}", file=self.out, flush=True)

    def finish(self, ok: bool, log_location: str, failure: str = "") -> None:
        """The stage's last line: done (with its progress) or failed (with the end of its log)."""
        with self.lock:
            state = self.state
            self.state = None
        if state is None:
            return
        seconds = time.monotonic() - state.started
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if ok:
            progress = state.result or (
                state.describe() if (state.total_steps or state.docs or state.evaluated) else ""
            )
            detail = f"; {progress}" if progress else ""
            print(f"{state.name}: done in {seconds:.1f}s{detail} (log: {log_location})", file=self.out, flush=True)
            return
        print(f"{state.name}: FAILED after {seconds:.1f}s: {failure}", file=self.out, flush=True)
        print(f"---- last lines of {log_location}", file=self.out)
        for text in state.tail:
            print(f"  {text}", file=self.out)
        print("----", file=self.out, flush=True)
