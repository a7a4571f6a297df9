"""Progress of long command-line steps, on stderr (stdout is for results): a ``rich`` bar on a
terminal, plain log lines otherwise. :func:`polled` measures work that reports nothing
itself, such as a Dagster run's (no callback reaches the command line)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{rate(task):.1f} {self.unit}/s", style="progress.data.speed")


def rate(task: Task) -> float:
    """Units per second since the step was first watched: work done before (files analysed
    by an earlier run) does not count, and a step measured in a few big jumps still has one."""
    elapsed = task.elapsed or 0.0
    return (task.completed - task.fields.get("first", 0)) / elapsed if elapsed > 0 else 0.0


def duration(seconds: float | None) -> str:
    """``0:01:15`` as rich's time column shows it; ``?`` while unknown."""
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


class StepProgress:
    """Done / total of one step, with rate and time left: a context manager to call with
    ``(done, total)`` as often as you like. Off a terminal (or given ``log``, where the lines go)
    it prints a line at most every ``log_every_s`` seconds, and a summary line at the end."""

    def __init__(
        self,
        label: str,
        *,
        unit: str = "files",
        console: Console | None = None,
        log: Callable[[str], None] | None = None,
        log_every_s: float = 10.0,
        get_time: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.console = console or Console(stderr=True)
        self.log = log
        self.interactive = log is None and self.console.is_terminal
        self.log_every_s = log_every_s
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            RateColumn(unit),
            TimeRemainingColumn(),
            console=self.console,
            get_time=get_time,
            disable=not self.interactive,  # still keeps the numbers for the log lines
        )
        self._task_id = self._bar.add_task(label, total=None)
        self._last_line = -float("inf")
        self._lock = threading.Lock()

    @property
    def task(self) -> Task:
        return self._bar.tasks[0]

    def __enter__(self) -> StepProgress:
        self._bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if "first" not in self.task.fields:
                self._bar.update(self._task_id, first=max(0, done))
            self._bar.update(self._task_id, completed=max(0, done), total=max(0, total))
            now = self._bar.get_time()
            if not self.interactive and now - self._last_line >= self.log_every_s:
                self._last_line = now
                task = self.task
                percent = 100 * task.completed / task.total if task.total else 100
                self._print(
                    f"({percent:.0f}%), {rate(task):.1f} {self.unit}/s, {duration(task.time_remaining)} left"
                )

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()  # a terminal keeps the final bar
        if not self.interactive:
            self._print(f"in {duration(self.task.elapsed or 0.0)}")

    def _print(self, rest: str) -> None:
        task = self.task
        line = f"{self.label}: {int(task.completed)}/{int(task.total or 0)} {self.unit} {rest}"
        if self.log is not None:
            self.log(line)
        else:
            self.console.print(line, highlight=False, soft_wrap=True)


@contextmanager
def polled(
    progress: StepProgress, measure: Callable[[], tuple[int, int]], *, interval_s: float = 1.0
) -> Iterator[None]:
    """Feeds ``progress`` with ``measure() -> (done, total)`` every ``interval_s``, from a daemon
    thread, while the body runs."""
    stop = threading.Event()

    def tick() -> None:
        try:
            done, total = measure()
        except Exception:  # the database briefly locked: progress must never break the work it watches
            return
        progress(done, total)

    def loop() -> None:
        while not stop.wait(interval_s):
            tick()

    thread = threading.Thread(target=loop, name=f"progress:{progress.label}", daemon=True)
    with progress:
        tick()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=max(5.0, 2 * interval_s))  # bounded: one measurement is one cheap query
            tick()
