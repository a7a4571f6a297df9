"""Dagster resources: configuration only in their fields. A client (the store's database
connection) is opened on first use within one execution (a run's step, a sensor tick) and
closed when that execution ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from nomarr_pipeline.ml.capacity import WorkerPlan, available_cores, plan_workers, visible_gpus
from nomarr_pipeline.settings import WRITE_MODES, Settings, split_roots
from nomarr_pipeline.store import Store, StoreError, open_store, store_engine
from nomarr_pipeline.tagging.selection import DEFAULT_MAX_LABELS

if TYPE_CHECKING:
    from nomarr_pipeline.calibration.histogram import SpecOverrides
    from nomarr_pipeline.calibration.tiers import TierConfig


class StoreResource(dg.ConfigurableResource):
    """Where the data lives. Unset fields fall back to the ``NOMARR_*`` environment."""

    url: str | None = None
    arango_db: str | None = None
    arango_user: str | None = None
    # Set them as dg.EnvVar("NOMARR_ARANGO_PASSWORD") / dg.EnvVar("NOMARR_PG_PASSWORD"); never
    # as literals. Without pg_password libpq's PGPASSWORD / ~/.pgpass still apply.
    arango_password: str | None = None
    pg_password: str | None = None

    _store: Store | None = PrivateAttr(default=None)

    def open(self) -> Store:
        """The store of this execution: connected on first use, closed at its end."""
        if self._store is None:
            env = Settings.from_env()
            if not self.url:
                env.ensure_store_folder()  # the data dir of the default store; never other folders
            self._store = open_store(
                self.url or env.store_url,
                arango_db=self.arango_db or env.arango_db,
                arango_user=self.arango_user or env.arango_user,
                arango_password=self.arango_password or env.arango_password,
                pg_password=self.pg_password or env.pg_password,
            )
        return self._store

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def describe(self) -> str:
        """The URL without credentials, for metadata and logs."""
        from nomarr_pipeline.store import redact_url

        return redact_url(self.url or Settings.from_env().store_url)


def configured_store_kind() -> str:
    """The engine of ``NOMARR_STORE_URL`` (``sqlite`` by default) for assets' ``kinds``
    badges, read when the definitions load; an unsupported URL shows as ``store`` here and
    fails with a clear error when an asset opens it."""
    url = os.environ.get("NOMARR_STORE_URL") or "sqlite://"
    try:
        return store_engine(url)
    except StoreError:
        return "store"


STORE_KIND = configured_store_kind()


class LibraryResource(dg.ConfigurableResource):
    """Library folders and the defaults a newly seen library gets."""

    roots: list[str] | None = None
    file_write_mode: str | None = None
    auto_write_tags: bool | None = None
    write_raw_scores: bool | None = None

    def root_paths(self) -> list[Path]:
        if self.roots is not None:
            return [Path(r).expanduser().absolute() for r in self.roots]
        return [p.absolute() for p in Settings.from_env().library_roots]

    def write_mode(self) -> str:
        mode = self.file_write_mode or Settings.from_env().file_write_mode
        if mode not in WRITE_MODES:
            raise ValueError(f"file_write_mode must be one of {WRITE_MODES}, got {mode!r}")
        return mode

    def auto_write(self) -> bool:
        if self.auto_write_tags is not None:
            return self.auto_write_tags
        return Settings.from_env().auto_write_tags

    def raw_scores(self) -> bool:
        if self.write_raw_scores is not None:
            return self.write_raw_scores
        return Settings.from_env().write_raw_scores


class ModelsResource(dg.ConfigurableResource):
    """The Essentia models folder and how analysis runs.

    0 (or None) means "from the ``NOMARR_*`` variable named, else chosen for this machine".
    ``shards`` is read once, when the code location loads: it is the number of steps of a
    predictions run. Every process of a deployment must see the same value.
    """

    models_dir: str | None = None
    processes: int = 0  # worker processes per shard step; 0 = its share of the cores, or one per GPU
    file_timeout_s: float = 300.0
    batch_size: int = 64  # files per store write: at most what a step that dies redoes
    shards: int = 0  # NOMARR_ANALYSIS_SHARDS; default: one per core
    # Intra-op threads per worker, TensorFlow and ONNX Runtime alike: NOMARR_INFERENCE_THREADS
    # (NOMARR_TF_THREADS, its older name, still read)
    tf_threads: int = 0
    tf_inter_op_threads: int = 0  # NOMARR_TF_INTER_OP_THREADS; default 1
    gpus: list[str] | None = None  # CUDA device ids, NOMARR_GPUS ("0,1"; "" = none); default: all visible

    def path(self) -> Path | None:
        if self.models_dir:
            return Path(self.models_dir).expanduser().absolute()
        return Settings.from_env().models_dir

    def shard_count(self) -> int:
        return self.shards or _env_int("NOMARR_ANALYSIS_SHARDS") or available_cores()

    def worker_plan(self, concurrent_steps: int) -> WorkerPlan:
        """Workers and TensorFlow threads of one shard step, ``concurrent_steps`` of which
        share this machine."""
        if self.gpus is not None:
            gpus = tuple(self.gpus)
        elif "NOMARR_GPUS" in os.environ:
            gpus = tuple(g.strip() for g in os.environ["NOMARR_GPUS"].split(",") if g.strip())
        else:
            gpus = visible_gpus()
        return plan_workers(
            cores=available_cores(),
            concurrent_steps=concurrent_steps,
            processes=self.processes,
            intra_op_threads=(self.tf_threads or _env_int("NOMARR_INFERENCE_THREADS")
                              or _env_int("NOMARR_TF_THREADS")),
            inter_op_threads=self.tf_inter_op_threads or _env_int("NOMARR_TF_INTER_OP_THREADS"),
            gpus=gpus,
        )


def _env_int(name: str) -> int:
    """A positive count from the environment; 0 when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


class CalibrationResource(dg.ConfigurableResource):
    """Calibration rules and where exports go."""

    export_dir: str | None = None
    drift_tolerance: float = 0.005
    min_n: int = 100
    # Histogram range per head: "{model_key}:{head_name}" or a bare head_name ->
    # {"lo": ..., "hi": ..., "bins": ...}; e.g. regression heads whose outputs leave [0, 1].
    histogram_overrides: dict[str, dict[str, float]] | None = None

    def histogram_specs(self) -> SpecOverrides:
        from nomarr_pipeline.calibration.histogram import HistogramSpec

        return {
            key: HistogramSpec(lo=float(spec["lo"]), hi=float(spec["hi"]), bins=int(spec.get("bins", 10_000)))
            for key, spec in (self.histogram_overrides or {}).items()
        }

    def export_path(self) -> Path:
        if self.export_dir:
            return Path(self.export_dir).expanduser().absolute()
        return Settings.from_env().export_dir


class TaggingResource(dg.ConfigurableResource):
    """Mood tiers and what the tag writer adds beyond the ``nom:`` namespace."""

    strict: float = 0.92
    regular: float = 0.80
    loose: float = 0.65
    term_map: dict[str, str] | None = None  # "head_name:label" or "label" -> term
    include_heads: list[str] | None = None
    exclude_heads: list[str] | None = None
    max_std: float | None = None
    standard_mood: bool = False  # also write the regular tier to TMOO / MOOD
    writers: int = 0  # files written at once (threads); 0 = 4; 1 = one after the other
    # Scores written per head: a head with more labels (400 Discogs styles) gets its strongest
    # ones only; 0 = every label.
    max_labels_per_head: int = DEFAULT_MAX_LABELS

    def tier_config(self) -> TierConfig:
        from nomarr_pipeline.calibration.tiers import DEFAULT_EXCLUDED_HEADS, TierConfig

        return TierConfig(
            strict=self.strict,
            regular=self.regular,
            loose=self.loose,
            term_map=dict(self.term_map or {}),
            include_heads=tuple(self.include_heads) if self.include_heads is not None else None,
            exclude_heads=tuple(self.exclude_heads)
            if self.exclude_heads is not None
            else DEFAULT_EXCLUDED_HEADS,
            max_std=self.max_std,
        )


__all__ = [
    "STORE_KIND",
    "CalibrationResource",
    "LibraryResource",
    "ModelsResource",
    "StoreResource",
    "TaggingResource",
    "split_roots",
]
