"""Dagster resources: configuration only. The store's connection opens on first use within one
execution (a step, a sensor tick) and closes when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from nomarr_pipeline.ml.capacity import WorkerPlan, available_cores, plan_workers, visible_gpus
from nomarr_pipeline.settings import WRITE_MODES, Settings
from nomarr_pipeline.store import Store, open_store, redact_url, store_engine
from nomarr_pipeline.store.sqlite import SqliteStore
from nomarr_pipeline.tagging.selection import DEFAULT_MAX_LABELS

if TYPE_CHECKING:
    from nomarr_pipeline.calibration.histogram import SpecOverrides
    from nomarr_pipeline.calibration.tiers import TierConfig
    from nomarr_pipeline.tagging.selection import TagOptions


class StoreResource(dg.ConfigurableResource):
    """Where the data lives (``nomarr_pipeline.definitions`` fills it from the settings)."""

    url: str
    # The embedded store's folder may be created (the data folder); a store elsewhere never
    # creates folders, so a mistyped URL does not start an empty store somewhere.
    create_folder: bool = False
    arango_db: str = "nomarr"
    arango_user: str | None = None  # None: the user in the ArangoDB URL, else root
    # dg.EnvVar("NOMARR_ARANGO_PASSWORD") / dg.EnvVar("NOMARR_PG_PASSWORD"), never literals.
    # Without pg_password libpq's PGPASSWORD / ~/.pgpass still apply.
    arango_password: str | None = None
    pg_password: str | None = None

    _store: Store | None = PrivateAttr(default=None)

    def open(self) -> Store:
        if self._store is None:
            if self.create_folder and store_engine(self.url) == "sqlite":
                SqliteStore.from_url(self.url).path.parent.mkdir(exist_ok=True)
            self._store = open_store(
                self.url,
                arango_db=self.arango_db,
                arango_user=self.arango_user,
                arango_password=self.arango_password,
                pg_password=self.pg_password,
            )
        return self._store

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def describe(self) -> str:
        return redact_url(self.url)


class LibraryResource(dg.ConfigurableResource):
    """Library folders and the defaults a newly seen library gets."""

    roots: list[str] = []  # noqa: RUF012 (pydantic copies field defaults)
    file_write_mode: str = "full"
    auto_write_tags: bool = False
    write_raw_scores: bool = False

    def root_paths(self) -> list[Path]:
        return [Path(root).expanduser().absolute() for root in self.roots]

    def write_mode(self) -> str:
        if self.file_write_mode not in WRITE_MODES:
            raise ValueError(f"file_write_mode must be one of {WRITE_MODES}, got {self.file_write_mode!r}")
        return self.file_write_mode


class ModelsResource(dg.ConfigurableResource):
    """The Essentia models folder and how analysis runs.

    0 means "chosen for this machine". ``shards`` is the number of steps of a predictions
    run, fixed when the code location loads: every process of a deployment must see the same.
    """

    models_dir: str | None = None
    processes: int = 0  # worker processes per shard step; 0 = its share of the cores, or one per GPU
    file_timeout_s: float = 300.0
    batch_size: int = 64  # files per store write: at most what a step that dies redoes
    shards: int = 0  # NOMARR_ANALYSIS_SHARDS; 0: one per core
    inference_engine: str = "auto"  # NOMARR_INFERENCE_ENGINE: auto, onnx or tensorflow
    # Intra-op threads per worker, TensorFlow and ONNX Runtime alike: NOMARR_INFERENCE_THREADS
    tf_threads: int = 0
    tf_inter_op_threads: int = 0  # NOMARR_TF_INTER_OP_THREADS; default 1
    gpus: list[str] | None = None  # CUDA device ids, NOMARR_GPUS ("0,1"; "" = none); None: all visible

    def path(self) -> Path | None:
        return Path(self.models_dir).expanduser().absolute() if self.models_dir else None

    def shard_count(self) -> int:
        return self.shards or available_cores()

    def worker_plan(self, concurrent_steps: int) -> WorkerPlan:
        """Workers and inference threads of one of ``concurrent_steps`` shard steps on this machine."""
        return plan_workers(
            cores=available_cores(),
            concurrent_steps=concurrent_steps,
            processes=self.processes,
            intra_op_threads=self.tf_threads,
            inter_op_threads=self.tf_inter_op_threads,
            gpus=tuple(self.gpus) if self.gpus is not None else visible_gpus(),
        )


class CalibrationResource(dg.ConfigurableResource):
    """Calibration rules and where exports go."""

    export_dir: str
    drift_tolerance: float = 0.005
    min_n: int = 100
    # NOMARR_HISTOGRAM_OVERRIDES: histogram range per head, "{model_key}:{head_name}" or a bare
    # head_name -> {"lo": ..., "hi": ..., "bins": ...}; e.g. regression heads whose outputs
    # leave [0, 1] (the out_of_range_ratio check and the calibration warning say which).
    histogram_overrides: dict[str, dict[str, float]] = {}  # noqa: RUF012 (pydantic copies it)

    def histogram_specs(self) -> SpecOverrides:
        from nomarr_pipeline.calibration.histogram import HistogramSpec

        return {
            key: HistogramSpec(lo=float(spec["lo"]), hi=float(spec["hi"]), bins=int(spec.get("bins", 10_000)))
            for key, spec in self.histogram_overrides.items()
        }

    def export_path(self) -> Path:
        return Path(self.export_dir).expanduser().absolute()


class TaggingResource(dg.ConfigurableResource):
    """Mood tiers, and what the tag writer puts into the fields players read
    (``nomarr_pipeline.definitions`` fills the latter from ``settings.tag_settings``)."""

    strict: float = 0.92
    regular: float = 0.80
    loose: float = 0.65
    term_map: dict[str, str] | None = None  # "head_name:label" or "label" -> term
    include_heads: list[str] | None = None
    exclude_heads: list[str] | None = None
    max_std: float | None = None
    writers: int = 0  # files written at once (threads); 0 = 4; 1 = one after the other
    # Where a preview run writes its CSV; no default, since a relative one would land in whatever
    # folder the code location was started from.
    previews_dir: str
    # What players read (README, "Using the tags in your player"); NOMARR_<FIELD> in upper case.
    standard_mood: bool = True  # the terms of mood_tier in MOOD (TMOO, ...)
    mood_tier: str = "mood-regular"
    replace_mood: bool = False  # MOOD holds the pipeline's terms only
    genre_head: str | None = None  # GENRE from this auto-tagging head (unset: no GENRE)
    genre_count: int = 3
    genre_threshold: float = 0.8
    genre_form: str = "parent-style"  # parent, style or parent-style
    replace_genre: bool = False  # write GENRE over the user's own
    score_heads: str = "mood"  # mood, all, none or head-name patterns
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
            exclude_heads=DEFAULT_EXCLUDED_HEADS if self.exclude_heads is None else tuple(self.exclude_heads),
            max_std=self.max_std,
        )

    def tag_options(self) -> TagOptions:
        from nomarr_pipeline.tagging.keys import GENRE, MOOD
        from nomarr_pipeline.tagging.selection import GenreOptions, TagOptions

        genre = None
        if self.genre_head:
            genre = GenreOptions(head=self.genre_head, count=self.genre_count,
                                 threshold=self.genre_threshold, form=self.genre_form)  # fmt: skip
        replace = {MOOD: self.replace_mood, GENRE: self.replace_genre}
        return TagOptions(
            mood_tier=self.mood_tier if self.standard_mood else None,
            score_heads=self.score_heads,
            max_labels=self.max_labels_per_head,
            genre=genre,
            replace_fields=frozenset(field for field, wanted in replace.items() if wanted),
            mood_head=self.tier_config().head_is_mood,
        )


def tagging_resource(settings: Settings) -> TaggingResource:
    """The ``tagging`` resource of the code location and of the command line."""
    return TaggingResource(previews_dir=str(settings.data_dir / "previews"), **settings.tags)

