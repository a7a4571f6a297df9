"""Progress of long steps for people watching a terminal or reading a log.

:class:`ProgressReporter` is a ``progress(done, total)`` callback: on a terminal it redraws
one line (bar, files done / total, rate, time left); otherwise it prints plain log lines, at
most one per ``log_every_s`` seconds plus the last one, so CI logs and ``nohup`` files stay
readable. :class:`ProgressPoller` drives a reporter from a background thread that measures
progress itself (e.g. by counting rows in the store) — the way to show progress of work that
runs inside a Dagster run, where no callback reaches the command line.

Plain Python: no Dagster import, so every layer may use it.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[int, int], None]
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3700`` → ``1h01m``; unknown (inf/nan) → ``?``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressReporter:
    """Shows ``done / total`` of one step with rate and time left.

    Call it with ``(done, total)`` as often as you like (it throttles itself); call
    :meth:`finish` once at the end. ``total`` may change between calls (work discovered
    on the way) and may be 0 (nothing to do).
    """

    def __init__(
        self,
        label: str,
        *,
        unit: str = "files",
        stream: TextIO | None = None,
        interactive: bool | None = None,
        log_every_s: float = 10.0,
        redraw_every_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self.log_every_s = log_every_s
        self.redraw_every_s = redraw_every_s
        self._clock = clock
        self._started = clock()
        self._last_shown = -math.inf
        self._first_done: int | None = None
        self.done = 0
        self.total = 0
        self._finished = False
        self._lock = threading.Lock()

    # ---- numbers -----------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._clock() - self._started

    def rate(self) -> float:
        """Units per second since the first report (work done before we started watching,
        e.g. files analysed by an earlier run, does not inflate the rate)."""
        elapsed = self.elapsed()
        progressed = self.done - (self._first_done or 0)
        return progressed / elapsed if elapsed > 0 and progressed > 0 else 0.0

    def seconds_left(self) -> float:
        rate = self.rate()
        remaining = max(0, self.total - self.done)
        if remaining == 0:
            return 0.0
        return remaining / rate if rate > 0 else math.inf

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), "
            f"{self.rate():.1f} {self.unit}/s, {format_duration(self.seconds_left())} left"
        )

    # ---- output ------------------------------------------------------------------------
    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self._first_done is None:
                self._first_done = done
            self.done, self.total = max(0, int(done)), max(0, int(total))
            now = self._clock()
            every = self.redraw_every_s if self.interactive else self.log_every_s
            if now - self._last_shown < every:
                return
            self._last_shown = now
            self._show()

    def _show(self) -> None:
        if self.interactive:
            filled = BAR_WIDTH if not self.total else int(BAR_WIDTH * min(1.0, self.done / self.total))
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            # \r + clear-to-end-of-line redraws in place without leaving fragments behind.
            self.stream.write(f"\r\x1b[K[{bar}] {self.line()}")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self, message: str | None = None) -> None:
        """Show the final state once (always, regardless of throttling) and end the line."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            summary = message or (
                f"{self.label}: {self.done}/{self.total} {self.unit} in {format_duration(self.elapsed())}"
            )
            prefix = "\r\x1b[K" if self.interactive else ""
            self.stream.write(f"{prefix}{summary}\n")
            self.stream.flush()


class ProgressPoller:
    """Calls ``measure() -> (done, total)`` every ``interval_s`` on a daemon thread and feeds
    ``reporter``; use it as a context manager around work that reports nothing itself.

    A failing measurement (e.g. the database is briefly locked) skips that tick: progress
    display must never break the work it watches.
    """

    def __init__(
        self,
        reporter: ProgressReporter,
        measure: Callable[[], tuple[int, int]],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.reporter = reporter
        self.measure = measure
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress:{reporter.label}", daemon=True)

    def _tick(self) -> None:
        try:
            done, total = self.measure()
        except Exception:  # see the class docstring
            return
        self.reporter(done, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def __enter__(self) -> ProgressPoller:
        self._tick()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        # Bounded: one measurement is a single cheap query.
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        self._tick()
        self.reporter.finish()
