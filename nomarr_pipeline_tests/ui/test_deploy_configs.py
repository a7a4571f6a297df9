"""Every Dagster instance file under deploy/ is valid for the installed Dagster, checked
without connecting anywhere: the instance schema always; a launcher's or storage's own
config schema whenever its package is installed (dagster-postgres is; dagster-docker and
dagster-k8s usually are not on a build machine)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
INSTANCE_FILES = sorted(DEPLOY.glob("dagster*.yaml"))
# Placeholders: the env-sourced fields must resolve, their values are not used to connect.
FAKE_ENV = {
    "DAGSTER_PG_HOST": "postgres.invalid",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
    "DAGSTER_PG_DB": "dagster",
}
CONFIGURABLE_SECTIONS = ("run_launcher", "run_coordinator", "compute_logs", "secrets")


def test_deploy_has_an_instance_file_per_launcher() -> None:
    names = {path.name for path in INSTANCE_FILES}
    assert {"dagster.postgres.yaml", "dagster.docker.yaml", "dagster.k8s.yaml"} <= names


def _class_config_type(module: str, class_name: str) -> Any | None:
    try:
        klass = getattr(importlib.import_module(module), class_name)
    except ImportError:
        return None
    return klass.config_type()


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_instance_file_matches_dagsters_schema(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(path.parent), path.name)
    assert custom_class is None
    assert config["telemetry"]["enabled"] is False

    raw = yaml.safe_load(path.read_text())
    storage = raw.get("storage", {})
    if "postgres" in storage or "custom" in storage:
        postgres = storage.get("postgres") or storage["custom"]["config"]
        db = postgres["postgres_db"]
        # The password only ever comes from the environment.
        assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}
        assert db["scheme"] == "postgresql+psycopg2"
        config_type = (
            _class_config_type(storage["custom"]["module"], storage["custom"]["class"])
            if "custom" in storage
            else _class_config_type("dagster_postgres", "DagsterPostgresStorage")
        )
        resolved = process_config(config_type, postgres)
        assert resolved.success, resolved.errors

    for section in CONFIGURABLE_SECTIONS:
        if section not in raw:
            continue
        entry = raw[section]
        config_type = _class_config_type(entry["module"], entry["class"])
        if config_type is None:
            continue  # package not installed here: the outer schema above is all we can check
        resolved = process_config(config_type, entry.get("config") or {})
        assert resolved.success, f"{section}: {resolved.errors}"


def test_production_instance_limits_runs_and_tag_writing() -> None:
    raw = yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())
    assert raw["concurrency"]["runs"]["max_concurrent_runs"] > 0
    assert raw["concurrency"]["pools"]["default_limit"] == 1
    assert "tag_writing" in (DEPLOY / "dagster.postgres.yaml").read_text()


def test_workspace_points_at_a_code_server() -> None:
    raw = yaml.safe_load((DEPLOY / "workspace.grpc.yaml").read_text())
    (entry,) = raw["load_from"]
    assert entry["grpc_server"]["location_name"] == "nomarr_pipeline"


def test_compose_runs_the_store_on_postgres_with_the_password_from_the_environment() -> None:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    env = raw["x-dagster-env"]
    assert env["NOMARR_STORE_URL"].startswith("postgresql://nomarr@postgres:5432/")
    assert env["NOMARR_PG_PASSWORD"] == "${NOMARR_PG_PASSWORD:?set NOMARR_PG_PASSWORD}"
    assert ":" not in env["NOMARR_STORE_URL"].split("//", 1)[1].split("@", 1)[0]  # no password in it
    postgres = raw["services"]["postgres"]
    assert "./postgres-init.sh:/docker-entrypoint-initdb.d/10-nomarr.sh:ro" in postgres["volumes"]
    assert "$NOMARR_PG_PASSWORD" in (DEPLOY / "postgres-init.sh").read_text()
    docker_instance = yaml.safe_load((DEPLOY / "dagster.docker.yaml").read_text())
    assert "NOMARR_PG_PASSWORD" in docker_instance["run_launcher"]["config"]["env_vars"]


EXECUTOR_FILES = {"dask": DEPLOY / "executors" / "dask.yaml", "k8s": DEPLOY / "executors" / "k8s.yaml"}


@pytest.mark.parametrize("name", sorted(EXECUTOR_FILES))
def test_executor_file_matches_its_executors_schema(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What NOMARR_EXECUTOR_CONFIG points at in a deployment, checked against the installed
    executor (the test command installs the dask and k8s extras)."""
    from nomarr_pipeline.defs.executors import REMOTE_EXECUTORS, configured_executor
    from nomarr_pipeline.settings import Settings

    module, attribute, _ = REMOTE_EXECUTORS[name]
    executor = getattr(importlib.import_module(module), attribute)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://dask-scheduler.invalid:8786")
    raw = yaml.safe_load(EXECUTOR_FILES[name].read_text())
    resolved = process_config(executor.config_schema.as_field().config_type, raw)
    assert resolved.success, resolved.errors
    # The code location loads with it: NOMARR_EXECUTOR + NOMARR_EXECUTOR_CONFIG.
    monkeypatch.setenv("NOMARR_EXECUTOR", name)
    monkeypatch.setenv("NOMARR_EXECUTOR_CONFIG", str(EXECUTOR_FILES[name]))
    assert configured_executor(Settings.from_env()).name == executor.name
    assert "password" not in EXECUTOR_FILES[name].read_text().lower()
