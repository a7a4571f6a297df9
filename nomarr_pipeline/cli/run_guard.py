"""What the command line checks around the runs it launches, so that a crashed run never
blocks it and two command lines never race:

- every run it launches carries the host, pid and start time of its process (tags); a run of
  this host whose process is gone (killed, crashed, machine rebooted) is marked failed and its
  concurrency-pool slots are freed (Dagster's daemon frees only the slots of finished runs);
- before a job whose steps use a pool (``written_tags`` uses ``tag_writing``) it waits until a
  slot is free, saying which runs hold them and since when, and sleeping between checks
  (Dagster's own wait inside an in-process run spins a core);
- the embedded SQLite store serves one pipeline at a time: a second command line waits for the
  first one (a lock next to the store, released by the kernel when its holder dies);
- SIGTERM stops the command line as Ctrl-C does, and either one is noticed even when Dagster
  swallowed it inside a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import dagster as dg
import psutil

HOST_TAG = "nomarr/host"
PID_TAG = "nomarr/pid"
PROCESS_STARTED_TAG = "nomarr/process_started"

POLL_S = 2.0  # between checks while waiting: a sleep, never a busy loop
REMIND_EVERY_S = 60.0
# Slots still held by a finished run are freed once it ended this long ago (as the daemon's
# run_monitoring.free_slots_after_run_end_seconds does).
FINISHED_RUN_GRACE_S = 60.0

IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]

Say = Callable[[str], None]


def _clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "an unknown time"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- the process behind a run ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the runs it launches remember it: a pid alone could be reused after a
    crash, the start time makes it unique."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessIdentity | None:
        try:
            return cls(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[PROCESS_STARTED_TAG]))
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), PROCESS_STARTED_TAG: f"{self.started:.2f}"}

    def is_alive(self) -> bool:
        """Whether this very process still runs (meaningful on its own host only)."""
        try:
            process = psutil.Process(self.pid)
            # psutil's start times have the kernel's tick resolution (10 ms).
            same = abs(process.create_time() - self.started) < 0.05
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # it exists, owned by another user
            return True

    def describe(self) -> str:
        return f"nomarr-pipeline pid {self.pid} on {self.host}, started {_clock(self.started)}"


# ---- stale runs and their slots -------------------------------------------------------------


@dataclass(frozen=True)
class SlotHolder:
    run_id: str
    job_name: str
    started: float | None
    owner: ProcessIdentity | None

    def describe(self) -> str:
        by = self.owner.describe() if self.owner else "launched by Dagster (UI, sensor or schedule)"
        return f"run {self.run_id[:8]} ({self.job_name}, {by}; running since {_clock(self.started)})"


class RunGuard:
    """Checks made before each run the command line launches on ``instance``."""

    def __init__(self, instance: dg.DagsterInstance, *, say: Say) -> None:
        self.instance = instance
        self.say = say
        self.identity = ProcessIdentity.current()

    def run_tags(self) -> dict[str, str]:
        return self.identity.tags()

    def fail_dead_runs(self) -> list[str]:
        """Mark failed every unfinished run of this host whose process is gone, and free the
        pool slots such runs (and long-finished ones) still hold; returns the failed run ids."""
        failed = []
        records = self.instance.get_run_records(
            filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={HOST_TAG: self.identity.host})
        )
        for record in records:
            run = record.dagster_run
            owner = ProcessIdentity.from_tags(run.tags)
            if owner is None or owner.is_alive():
                continue
            self.instance.report_run_failed(
                run,
                f"The process that ran this run ({owner.describe()}) is gone: it was killed or "
                f"crashed. Marked failed by nomarr-pipeline pid {os.getpid()}, which freed its "
                "concurrency slots.",
            )
            self._free_slots(run.run_id)
            failed.append(run.run_id)
            self.say(
                f"run {run.run_id[:8]} ({run.job_name}) was left unfinished by {owner.describe()}, "
                "which is gone: marked failed"
            )
        self._free_slots_of_finished_runs()
        return failed

    def _free_slots(self, run_id: str) -> None:
        # Dagster has no public instance method for this; its own daemon calls the storage.
        self.instance.event_log_storage.free_concurrency_slots_for_run(run_id)

    def _free_slots_of_finished_runs(self) -> None:
        """Slots of runs that are finished or deleted: left by a crash between marking a run
        failed and freeing its slots, or by a run marked failed in the UI."""
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return
        holding = storage.get_concurrency_run_ids()
        if not holding:
            return
        records = self._records(list(holding))
        now = time.time()
        for run_id in holding:
            record = records.get(run_id)
            if record is None:
                self._free_slots(run_id)  # the run was deleted
                continue
            run = record.dagster_run
            if run.status not in FINISHED:
                continue
            owner = ProcessIdentity.from_tags(run.tags)
            ours_and_gone = owner is not None and owner.host == self.identity.host and not owner.is_alive()
            if ours_and_gone or (record.end_time or now) + FINISHED_RUN_GRACE_S < now:
                self._free_slots(run_id)

    def _records(self, run_ids: list[str]) -> dict[str, dg.RunRecord]:
        if not run_ids:
            return {}
        found = self.instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
        return {record.dagster_run.run_id: record for record in found}

    def pool_holders(self, pool: str) -> tuple[int | None, list[SlotHolder]]:
        """The pool's limit (``None``: unlimited) and the runs holding its slots."""
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return None, []
        info = storage.get_concurrency_info(pool)
        run_ids = list(dict.fromkeys(slot.run_id for slot in info.claimed_slots))
        records = self._records(run_ids)
        holders = []
        for slot in info.claimed_slots:
            record = records.get(slot.run_id)
            run = record.dagster_run if record else None
            holders.append(
                SlotHolder(
                    slot.run_id,
                    run.job_name if run else "deleted run",
                    (record.start_time or record.create_timestamp.timestamp()) if record else None,
                    ProcessIdentity.from_tags(run.tags) if run else None,
                )
            )
        return info.limit, holders

    def wait_for_pools(self, job: dg.JobDefinition) -> None:
        """Return once every pool ``job``'s steps use has a free slot; meanwhile say which
        runs hold them, every minute, sleeping between checks."""
        granularity = self.instance.event_log_storage.get_pool_config().pool_granularity
        if granularity is not None and granularity.value == "run":
            return  # pools are enforced when runs are dequeued, never inside a run
        pools = sorted({node.pool for node in job.all_node_defs if getattr(node, "pool", None)})
        last_said = 0.0
        while True:
            busy = []
            for pool in pools:
                limit, holders = self.pool_holders(pool)
                if limit is not None and len(holders) >= limit:
                    busy.append((pool, limit, holders))
            if not busy:
                return
            if time.monotonic() - last_said >= REMIND_EVERY_S:
                last_said = time.monotonic()
                for pool, limit, holders in busy:
                    held = "; ".join(holder.describe() for holder in holders)
                    self.say(
                        f"{job.name} waits for a free slot of pool {pool} (limit {limit}), held by {held}. "
                        "Waiting (Ctrl-C to stop); if that run is not running any more, terminate it "
                        "in the Dagster UI to free its slot"
                    )
            time.sleep(POLL_S)
            # A signal handler's KeyboardInterrupt can be lost (raised inside a garbage
            # collector callback): the wake-up pipe still has the signal.
            STOP.raise_if_received()
            self.fail_dead_runs()


# ---- one pipeline per embedded store --------------------------------------------------------


@contextlib.contextmanager
def one_pipeline_per_store(store_path: Path, command: str, *, say: Say) -> Iterator[None]:
    """Hold the embedded store for this command line; a second one waits, saying for whom.

    The lock file (``<store>.lock``, kept between runs) is released by the kernel when its
    holder exits or dies, so a crash never leaves it held."""
    lock_path = store_path.with_name(store_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            holder = _read_holder(fd)
            say(
                f"the embedded store {store_path} is in use by {holder}; it serves one pipeline "
                "at a time, so this one waits for it to finish (Ctrl-C to stop)"
            )
            while not _try_lock(fd):
                time.sleep(POLL_S / 4)
                STOP.raise_if_received()
        os.ftruncate(fd, 0)
        about = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.pwrite(fd, json.dumps(about).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0) or b"{}")
        where = f"pid {about['pid']} on {about['host']}, since {_clock(about['since'])}"
        return f"`nomarr-pipeline {about['command']}` ({where})"
    except (ValueError, KeyError, TypeError):
        return "another nomarr-pipeline"


# ---- stopping -------------------------------------------------------------------------------


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM stop the command line the same way: a KeyboardInterrupt.

    While a Dagster run executes in-process, Dagster takes both signals over and turns them
    into an interrupted step, or nothing at all between steps; the wake-up pipe below records
    every signal at the C level, so :meth:`received` still knows after the run returned."""

    def __init__(self) -> None:
        self._pipe: tuple[int, int] | None = None
        self._seen: int | None = None
        self._previous: tuple[int, object] | None = None

    def __enter__(self) -> StopSignals:
        self._seen = None
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._previous = (
            signal.set_wakeup_fd(write, warn_on_full_buffer=False),
            signal.signal(signal.SIGTERM, _interrupt),
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.set_wakeup_fd(self._previous[0])
            signal.signal(signal.SIGTERM, self._previous[1])  # type: ignore[arg-type]
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
        self._pipe = self._previous = None

    def received(self) -> int | None:
        """The last stop signal received so far (``None``: none)."""
        if self._pipe is not None:
            with contextlib.suppress(BlockingIOError):
                for number in os.read(self._pipe[0], 512):
                    if number in (signal.SIGINT, signal.SIGTERM):
                        self._seen = number
        return self._seen

    def raise_if_received(self) -> None:
        if self.received() is not None:
            raise KeyboardInterrupt


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP = StopSignals()
