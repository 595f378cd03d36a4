"""What a run tells a person while it works. The executor reports step starts and ends and
progress inside a step (shards, examples, epochs); a Reporter turns that into output.

`Reporter` is silent; `LineReporter` writes one line per event to a callable (the default for
the Python API and for non-terminal output)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Reporter:
    """Receives progress events; every method may be called from worker threads."""

    def step_started(self, step: Any) -> None:
        pass

    def step_finished(self, step: Any, status: str, seconds: float) -> None:
        pass

    def advance(self, step_id: str, done: int, total: int | None = None, **info: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineReporter(Reporter):
    """One line per event, through `say` (e.g. click.echo to stderr). Progress inside a step is
    printed at most every `every` seconds, and always for its last unit."""

    def __init__(self, say: Callable[[str], None], every: float = 0.0):
        self.say, self.every = say, every
        self.last: dict[str, float] = {}
        self.labels: dict[str, str] = {}

    def step_started(self, step: Any) -> None:
        self.labels[step.id] = step.label
        self.say(f"{step.kind}: {step.label}")

    def step_finished(self, step: Any, status: str, seconds: float) -> None:
        if status != "computed":
            self.say(f"{step.kind}: {step.label} ({status})")

    def advance(self, step_id: str, done: int, total: int | None = None, **info: Any) -> None:
        now = time.monotonic()
        if total is not None and done < total and now - self.last.get(step_id, 0.0) < self.every:
            return
        self.last[step_id] = now
        unit = info.pop("unit", "shard")
        extra = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in info.items())
        count = f"{done}/{total}" if total is not None else str(done)
        self.say(f"  {self.labels.get(step_id, step_id)}: {unit} {count}" + (f" ({extra})" if extra else ""))

    def message(self, text: str) -> None:
        self.say(text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


class RichReporter(Reporter):
    """A live display on a terminal: one line per running step with a bar, the rate and the time
    left, finished steps printed above it (cached ones as cached)."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.fields[kind]}[/] {task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                                 TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.tasks: dict[str, int] = {}
        self.progress.start()

    def step_started(self, step: Any) -> None:
        self.tasks[step.id] = self.progress.add_task(step.label, total=None, kind=step.kind, unit="", info="")

    def step_finished(self, step: Any, status: str, seconds: float) -> None:
        task = self.tasks.pop(step.id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.console.print(f"[bold]{step.kind}[/] {step.label}: {status}" + (f" in {seconds:.1f} s"
                                                                          if status != "cached" else ""))

    def advance(self, step_id: str, done: int, total: int | None = None, **info: Any) -> None:
        task = self.tasks.get(step_id)
        if task is None:
            return
        unit = info.pop("unit", "shard")
        extra = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in info.items())
        self.progress.update(task, completed=done, total=total, unit=unit, info=extra)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def for_terminal(quiet: bool, stream=None) -> Reporter:
    """The reporter a command uses: nothing with -q, a live display on a terminal, else a line
    every few seconds (CI logs; SELECTKIT_PROGRESS_EVERY sets the seconds, 0 for every unit)."""
    import os
    import sys

    stream = stream or sys.stderr
    if quiet:
        return Reporter()
    if stream.isatty():
        return RichReporter()
    try:
        every = max(0.0, float(os.environ.get("SELECTKIT_PROGRESS_EVERY", "5")))
    except ValueError:
        every = 5.0
    return LineReporter(lambda text: print(text, file=stream, flush=True), every=every)


def as_reporter(progress: Reporter | Callable[[str], None] | None) -> Reporter:
    if progress is None:
        return Reporter()
    if isinstance(progress, Reporter):
        return progress
    return LineReporter(progress)
