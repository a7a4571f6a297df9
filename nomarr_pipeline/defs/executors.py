"""The executor of the code location's jobs: ``NOMARR_EXECUTOR`` (``multiprocess``, ``dask``,
``celery`` or ``k8s``; a package is imported only when chosen), configured from the YAML file
``NOMARR_EXECUTOR_CONFIG`` names, so runs of sensors and schedules get it too (``deploy/executors/``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from nomarr_pipeline.settings import SettingError, Settings
from nomarr_pipeline.store import StoreError, store_engine

# name -> (module, attribute, pip extra of this project)
REMOTE_EXECUTORS: dict[str, tuple[str, str, str]] = {
    "dask": ("dagster_dask", "dask_executor", "dask"),
    "celery": ("dagster_celery", "celery_executor", "celery"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "k8s"),
}


class ExecutorSettingError(ValueError):
    """``NOMARR_EXECUTOR`` or its config cannot be used; the message says what to change."""


class RunRefusedError(dg.DagsterError):
    """A run refused before it starts; Dagster records it as the run's failure."""


def is_remote(executor: str) -> bool:
    """Whether the executor may run steps on other machines (then they need a server store)."""
    return executor in REMOTE_EXECUTORS


def refuse_embedded_store(executor: str, store_engine: str) -> None:
    """Raise when steps that may run on other machines would use the embedded SQLite store."""
    if is_remote(executor) and store_engine == "sqlite":
        raise ExecutorSettingError(
            f"the {executor} executor runs steps on other machines, which cannot share the embedded "
            "SQLite store: set NOMARR_STORE_URL to a server store (postgresql://… or an ArangoDB "
            "http(s)://… URL), or NOMARR_EXECUTOR=multiprocess to run on this machine only"
        )


def _remote_executor(name: str, store_url: str) -> dg.ExecutorDefinition:
    module, attribute, extra = REMOTE_EXECUTORS[name]
    try:
        base: dg.ExecutorDefinition = getattr(importlib.import_module(module), attribute)
    except ImportError:
        raise SettingError(
            "NOMARR_EXECUTOR", f"is {name}, whose package {module.replace('_', '-')} is not installed",
            f"multiprocess, or install it: pip install 'nomarr_pipeline[{extra}]'"
        ) from None
    creation_fn = base.executor_creation_fn
    if creation_fn is None:
        raise ExecutorSettingError(f"{module}.{attribute} cannot create an executor")

    def refuse_then_create(init_context: dg.InitExecutorContext) -> dg.Executor:
        # Before the executor contacts its cluster or starts a step: at once, in the run's log.
        try:
            refuse_embedded_store(name, store_engine(store_url))
        except (ExecutorSettingError, StoreError) as error:
            raise RunRefusedError(str(error)) from None
        executor = creation_fn(init_context)
        if name == "dask":
            # dagster-dask hands Dask a run it cannot submit: see nomarr_pipeline.defs.dask_executor.
            from nomarr_pipeline.defs.dask_executor import OpaqueRunDaskExecutor

            executor = OpaqueRunDaskExecutor.wrapping(executor)  # type: ignore[arg-type]
        return executor

    return dg.ExecutorDefinition(
        name=base.name,
        config_schema=base.config_schema,
        requirements=base.get_requirements,
        executor_creation_fn=refuse_then_create,
        description=base.description,
    )


def _executor_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SettingError("NOMARR_EXECUTOR_CONFIG", f"names {path}, which cannot be read: {error}",
                           "a readable YAML file (deploy/executors/ has one per executor)") from None
    if not isinstance(config, dict):
        raise SettingError("NOMARR_EXECUTOR_CONFIG", f"names {path}, which holds no mapping",
                           "a YAML file holding the executor's config (deploy/executors/)")
    return config


def configured_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor ``NOMARR_EXECUTOR`` names, configured from ``NOMARR_EXECUTOR_CONFIG``."""
    name = settings.executor
    base = _remote_executor(name, settings.store_url) if is_remote(name) else dg.multiprocess_executor
    config = _executor_config(settings.executor_config)
    return base.configured(config, name=base.name) if config is not None else base
