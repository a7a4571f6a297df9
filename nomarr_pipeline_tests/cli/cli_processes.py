"""Real ``nomarr-pipeline`` processes for the crash, signal and concurrency tests: a library,
models, a store and a Dagster instance in one folder, commands run as subprocesses in their
own process group (so a test can kill the whole group as a user's ``kill`` or ``timeout``
would), and the Dagster instance they share, opened by the test itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg

from nomarr_pipeline.cli.demo import build_demo_library
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.store import Store, open_store

ONE_HEAD = ("mood_happy-discogs-effnet-1",)
TAG_WRITING = "tag_writing"


class PipelineFolder:
    """Everything one user's pipeline needs, under ``root``; commands run as subprocesses."""

    def __init__(
        self,
        root: Path,
        *,
        library: Path | None = None,
        models: Path | None = None,
        store_url: str | None = None,
        pg_password: str | None = None,
    ) -> None:
        self.root = root
        self.library = library or root / "library"
        self.models = models or root / "models"
        self.data = root / "data"
        self.home = root / "dagster_home"
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "NOMARR_DATA_DIR": str(self.data),
            "NOMARR_LIBRARY_ROOTS": str(self.library),
            "NOMARR_MODELS_DIR": str(self.models),
            "NOMARR_FILE_WRITE_MODE": "full",
        }
        for name in ("NOMARR_STORE_URL", "NOMARR_EXPORT_DIR", "NOMARR_PG_PASSWORD"):
            self.env.pop(name, None)
        # Default: the embedded store in the data folder.
        self.store_url = store_url or f"sqlite:///{self.store_path}"
        self.pg_password = pg_password
        if store_url:
            self.env["NOMARR_STORE_URL"] = store_url
        if pg_password:
            self.env["NOMARR_PG_PASSWORD"] = pg_password
        self.started = 0

    @property
    def store_path(self) -> Path:
        return self.data / "nomarr.sqlite3"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "nomarr_pipeline.cli.main", *args]

    def run(self, *args: str, timeout: float = 600, **env: str) -> Command:
        """Run a command to its end (killing its group if it outlives ``timeout``)."""
        command = self.start(*args, **env)
        command.wait(timeout)
        return command

    def start(self, *args: str, **env: str) -> Command:
        self.started += 1
        logs = self.root / "logs" / f"{self.started:03d}-{args[0]}"
        logs.parent.mkdir(exist_ok=True)
        with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
            process = subprocess.Popen(
                self.command(*args),
                env={**self.env, **env},
                cwd=self.root,
                stdout=out,
                stderr=err,
                text=True,
                start_new_session=True,  # its own process group, as a shell job
            )
        return Command(" ".join(args), process, logs)

    @contextmanager
    def store(self) -> Iterator[Store]:
        store = open_store(self.store_url, pg_password=self.pg_password)
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            yield instance


class Command:
    """A started ``nomarr-pipeline`` command; its output goes to files next to the folder."""

    def __init__(self, name: str, process: subprocess.Popen[str], logs: Path) -> None:
        self.name = name
        self.process = process
        self.logs = logs

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def stdout(self) -> str:
        return Path(f"{self.logs}.out").read_text()

    @property
    def stderr(self) -> str:
        return Path(f"{self.logs}.err").read_text()

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"`nomarr-pipeline {self.name}` still ran after {timeout}s; stderr:\n{self.stderr[-3000:]}"
            ) from None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal its whole process group (workers included), as ``kill -- -PGID`` does."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()

    def wait_for_stderr(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return self.stderr
            if self.returncode is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"`nomarr-pipeline {self.name}` never said {text!r}; stderr:\n{self.stderr[-3000:]}"
        )


def build_library(root: Path, copies: int) -> Path:
    """The demo tracks (every format), ``copies`` times over, in ``root``."""
    demo = build_demo_library(root.parent / f"{root.name}-demo")
    for index in range(copies):
        shutil.copytree(demo, root / f"copy{index}")
    return root


def write_one_head_models(dest: Path) -> Path:
    write_demo_models(dest, heads=ONE_HEAD)
    return dest


def claimed_slots(instance: dg.DagsterInstance, pool: str = TAG_WRITING) -> list[str]:
    """Run ids holding slots of ``pool``."""
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots]


def wait_for_new_claim(
    instance: dg.DagsterInstance, command: Command, known: set[str], timeout: float = 180
) -> str:
    """The run of ``command`` once it holds a tag_writing slot (its tag-writing step runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run_id for run_id in claimed_slots(instance) if run_id not in known]
        if new:
            return new[0]
        if command.returncode is not None:
            raise AssertionError(f"`{command.name}` ended ({command.returncode}) before writing tags")
        time.sleep(0.02)
    command.kill()
    raise AssertionError(
        f"no tag_writing slot within {timeout}s; held by {claimed_slots(instance)} "
        "(a waiting step that never gets a slot is the hang of issue 14)"
    )


def shift_calibrations(folder: PipelineFolder, variant: int) -> None:
    """Give every file new tags to write: each calibration's p95 moves (``variant`` 0 is the
    computed one), so every file is recalibrated and its ``nom:cal`` scores change."""
    with folder.store() as store:
        states = store.list_calibrations()
        for state in states:
            state["p95"] = state["computed_p95"] - 0.01 * variant * (state["computed_p95"] - state["p5"])
        store.save_calibrations(states, [])
