"""NOMARR_EXECUTOR picks the executor; steps that may leave this machine never use SQLite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from nomarr_pipeline.defs.executors import ExecutorSettingError, configured_executor, refuse_embedded_store
from nomarr_pipeline.settings import SettingError, Settings
from nomarr_pipeline_tests.defs.assets.sharded_runs import HEADS, REPO


def _executor() -> dg.ExecutorDefinition:
    return configured_executor(Settings.from_env())


@pytest.mark.parametrize("name", ["multiprocess", "dask", "k8s"])
def test_the_named_executor_is_used(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMARR_EXECUTOR", name)
    assert _executor().name == name


def test_default_and_bad_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMARR_EXECUTOR", raising=False)
    assert _executor().name == "multiprocess"
    monkeypatch.setenv("NOMARR_EXECUTOR", "spark")
    with pytest.raises(SettingError, match="NOMARR_EXECUTOR is 'spark', not one of multiprocess, dask"):
        _executor()


def test_an_executor_whose_package_is_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMARR_EXECUTOR", "celery")
    monkeypatch.setitem(sys.modules, "dagster_celery", None)  # not importable, installed or not
    with pytest.raises(SettingError, match=r"pip install 'nomarr_pipeline\[celery\]'"):
        _executor()


def test_executor_config_comes_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "executor.yaml"
    config.write_text("max_concurrent: 3\nretries:\n  enabled: {}\n")
    monkeypatch.setenv("NOMARR_EXECUTOR_CONFIG", str(config))
    executor = _executor()
    assert executor.name == "multiprocess"
    assert not executor.config_schema.as_field().is_required  # configured: nothing left to give
    config.write_text("- not a mapping\n")
    with pytest.raises(SettingError, match="holds no mapping"):
        _executor()
    monkeypatch.setenv("NOMARR_EXECUTOR_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingError, match="cannot be read"):
        _executor()


def test_only_remote_executors_refuse_sqlite() -> None:
    refuse_embedded_store("multiprocess", "sqlite")
    refuse_embedded_store("dask", "postgresql")
    for name in ("dask", "celery", "k8s"):
        with pytest.raises(ExecutorSettingError, match="set NOMARR_STORE_URL to a server store"):
            refuse_embedded_store(name, "sqlite")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_dask_run_on_sqlite_is_refused_before_any_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("heads", list(HEADS))
    config = tmp_path / "dask.yaml"
    # Nothing listens there: contacting the "cluster" would hang, not fail at once.
    config.write_text(f"cluster:\n  existing:\n    address: tcp://127.0.0.1:{_closed_port()}\n")
    env = {**os.environ, "NOMARR_EXECUTOR": "dask", "NOMARR_EXECUTOR_CONFIG": str(config),
           "NOMARR_STORE_URL": f"sqlite:///{tmp_path / 'nomarr.sqlite3'}",
           "NOMARR_MODELS_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "nomarr_pipeline_tests.defs.assets.predictions_run", HEADS[0], HEADS[-1]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert not run["success"]
    with dg.DagsterInstance.get() as instance:
        events = [r.event_log_entry.dagster_event
                  for r in instance.get_records_for_run(run["run_id"]).records
                  if r.event_log_entry.dagster_event]
    assert not [e for e in events if e.event_type == DagsterEventType.STEP_START]
    messages = " ".join(str(e.message) + str(getattr(e.event_specific_data, "error", "")) for e in events)
    assert "the dask executor runs steps on other machines" in messages
    assert "set NOMARR_STORE_URL to a server store" in messages
