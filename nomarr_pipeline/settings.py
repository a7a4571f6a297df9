"""The ``NOMARR_*`` settings (README's Configuration table): the one reader of the environment,
for the command line and the code location. Secrets are never put into repr, logs or metadata."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nomarr_pipeline.calibration.tiers import TIER_NAMES
from nomarr_pipeline.store import Store, StoreError, open_store, redact_url, store_engine
from nomarr_pipeline.store.sqlite import SqliteStore
from nomarr_pipeline.tagging.selection import DEFAULT_MAX_LABELS, GENRE_FORMS

# The project folder's configuration: `dagster dev` started in that folder loads it too.
ENV_FILE = Path(".env")
WRITE_MODES = ("none", "minimal", "full")
EXECUTORS = ("multiprocess", "dask", "celery", "k8s")
# Five cron fields (minute hour day month weekday): numbers, names, *, ranges, steps, lists.
_CRON_PART = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_CRON_FIELD = re.compile(rf"^{_CRON_PART}(,{_CRON_PART})*$")
_CRON_ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
INFERENCE_ENGINES = ("auto", "onnx", "tensorflow")


class SettingError(ValueError):
    """A ``NOMARR_*`` variable whose value cannot work: what is wrong, and what to set it to."""

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        self.variable = variable
        self.problem = f"{variable} {problem}"
        self.next_step = f"set {variable} to {expected}"
        super().__init__(f"{self.problem} (next: {self.next_step})")


def load_env_file() -> None:
    """Put the values of ``ENV_FILE`` into the environment, under what the shell set."""
    from dotenv import dotenv_values

    for name, value in dotenv_values(ENV_FILE).items():
        if value is not None:
            os.environ.setdefault(name, value)


def write_env_file(values: dict[str, str]) -> Path:
    """Set ``values`` in ``ENV_FILE``, keeping its other lines; its path."""
    from dotenv import set_key

    ENV_FILE.touch()
    for name, value in values.items():
        set_key(ENV_FILE, name, value, quote_mode="never")
    return ENV_FILE.absolute()


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingError(name, f"is {raw!r}, not true or false", "true or false")


def _env_str(name: str) -> str | None:
    return os.environ.get(name) or None


def _env_count(name: str) -> int:
    """A positive count; 0 when unset (the caller's default applies)."""
    raw = (_env_str(name) or "").strip()
    if raw and (not raw.isdigit() or int(raw) < 1):
        raise SettingError(name, f"is {raw!r}, not a whole number of at least 1",
                           "a whole number like 2, or unset it")
    return int(raw or 0)


def _env_choice(name: str, default: str, choices: tuple[str, ...], what: str = "", expected: str = "") -> str:
    value = (_env_str(name) or default).strip().lower()
    if value not in choices:
        problem = f"is {value!r}, not {what or 'one of ' + ', '.join(choices)}"
        raise SettingError(name, problem, expected or " or ".join(choices))
    return value


def _env_cron(name: str, default: str) -> str:
    value = (_env_str(name) or default).strip()
    fields = value.split()
    if value not in _CRON_ALIASES and (len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields)):
        raise SettingError(name, f"is {value!r}, not a cron schedule",
                           "five fields like '0 3 * * *' (03:00 daily)")
    return value


def _env_timezone(name: str, default: str) -> str:
    value = (_env_str(name) or default).strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingError(name, f"is {value!r}, not a time zone",
                           "an IANA time zone like UTC or Europe/Berlin") from None
    return value


def _env_histogram_overrides(name: str) -> dict[str, dict[str, float]]:
    """JSON: head ("model_key:head_name" or head_name) -> {"lo": .., "hi": .., "bins": ..}."""
    raw = _env_str(name)
    if raw is None:
        return {}
    expected = 'JSON like {"effnet-discogs-effnet-1:approachability_regression": {"lo": -1, "hi": 10}}'
    try:
        value = json.loads(raw)
        overrides = {str(head): {str(k): float(v) for k, v in spec.items()} for head, spec in value.items()}
    except (ValueError, TypeError, AttributeError):
        raise SettingError(name, "is not a JSON object of heads to {lo, hi}", expected) from None
    for head, spec in overrides.items():
        if not {"lo", "hi"} <= spec.keys() or spec["lo"] >= spec["hi"]:
            raise SettingError(name, f"gives {head} no range with lo < hi", expected)
    return overrides


def _env_gpus(name: str) -> tuple[str, ...] | None:
    """CUDA device ids ("0,1"; "" = none); ``None`` when unset (every visible GPU)."""
    raw = os.environ.get(name)
    return None if raw is None else tuple(gpu.strip() for gpu in raw.split(",") if gpu.strip())


def inference_engine() -> str:
    """``NOMARR_INFERENCE_ENGINE``: which engine runs a model that has both a ``.pb`` and an ``.onnx``."""
    expected = "auto (ONNX Runtime where an .onnx exists), onnx or tensorflow"
    return _env_choice("NOMARR_INFERENCE_ENGINE", "auto", INFERENCE_ENGINES, "an inference engine", expected)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    store_url: str
    arango_db: str
    arango_user: str | None  # None: the user in the ArangoDB URL, else root
    arango_password: str | None = field(repr=False)
    pg_password: str | None = field(repr=False)
    library_roots: tuple[Path, ...]
    models_dir: Path | None
    export_dir: Path
    file_write_mode: str
    auto_write_tags: bool
    write_raw_scores: bool
    analysis_shards: int  # 0: one per core
    inference_engine: str
    tf_threads: int  # intra-op threads per worker, both engines; 0: chosen for this machine
    tf_inter_op_threads: int
    gpus: tuple[str, ...] | None
    executor: str
    executor_config: Path | None
    calibration_cron: str
    schedule_timezone: str
    histogram_overrides: dict[str, dict[str, float]]
    tags: dict[str, Any]  # tag_settings()
    # The NOMARR_* variables that were set, so the code location can show them as dg.EnvVar.
    from_environment: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env_str("NOMARR_DATA_DIR") or ".nomarr").expanduser().absolute()
        store_url = _env_str("NOMARR_STORE_URL") or default_store_url(data_dir)
        _check_store_url(store_url)
        mode = (_env_str("NOMARR_FILE_WRITE_MODE") or "full").lower()
        if mode not in WRITE_MODES:
            raise SettingError(
                "NOMARR_FILE_WRITE_MODE", f"is {mode!r}, not a write mode", "none, minimal or full"
            )
        models = _env_str("NOMARR_MODELS_DIR")
        export = _env_str("NOMARR_EXPORT_DIR")
        roots = (_env_str("NOMARR_LIBRARY_ROOTS") or "").split(os.pathsep)
        return cls(
            data_dir=data_dir,
            store_url=store_url,
            arango_db=_env_str("NOMARR_ARANGO_DB") or "nomarr",
            arango_user=_env_str("NOMARR_ARANGO_USER"),
            arango_password=_env_str("NOMARR_ARANGO_PASSWORD"),
            pg_password=_env_str("NOMARR_PG_PASSWORD"),
            library_roots=tuple(Path(root).expanduser() for root in roots if root.strip()),
            models_dir=Path(models).expanduser().absolute() if models else None,
            export_dir=Path(export).expanduser().absolute() if export else data_dir / "calibration",
            file_write_mode=mode,
            auto_write_tags=_env_bool("NOMARR_AUTO_WRITE_TAGS", False),
            write_raw_scores=_env_bool("NOMARR_WRITE_RAW_SCORES", False),
            analysis_shards=_env_count("NOMARR_ANALYSIS_SHARDS"),
            inference_engine=inference_engine(),
            # NOMARR_TF_THREADS: the older name, from when TensorFlow was the only engine.
            tf_threads=_env_count("NOMARR_INFERENCE_THREADS") or _env_count("NOMARR_TF_THREADS"),
            tf_inter_op_threads=_env_count("NOMARR_TF_INTER_OP_THREADS"),
            gpus=_env_gpus("NOMARR_GPUS"),
            executor=_env_choice("NOMARR_EXECUTOR", EXECUTORS[0], EXECUTORS),
            executor_config=Path(conf).expanduser() if (conf := _env_str("NOMARR_EXECUTOR_CONFIG")) else None,
            calibration_cron=_env_cron("NOMARR_CALIBRATION_CRON", "0 3 * * *"),
            schedule_timezone=_env_timezone("NOMARR_SCHEDULE_TIMEZONE", "UTC"),
            histogram_overrides=_env_histogram_overrides("NOMARR_HISTOGRAM_OVERRIDES"),
            tags=tag_settings(),
            from_environment=frozenset(name for name in os.environ if name.startswith("NOMARR_")),
        )

    def open_store(self, url: str | None = None) -> Store:
        """The store at ``url`` (by default the configured one), with the configured credentials."""
        return open_store(
            url or self.store_url,
            arango_db=self.arango_db,
            arango_user=self.arango_user,
            arango_password=self.arango_password,
            pg_password=self.pg_password,
        )

    def store_identity(self) -> str:
        """The store without credentials, the same whichever way its URL was written."""
        path = self.sqlite_store_path()
        return f"sqlite:///{path}" if path else redact_url(self.store_url)

    def sqlite_store_path(self) -> Path | None:
        """The file of the embedded store, ``None`` for a database server."""
        return SqliteStore.from_url(self.store_url).path if store_engine(self.store_url) == "sqlite" else None

    def ensure_store_folder(self) -> None:
        """Create the data folder when the embedded store lives in it (the default); elsewhere a
        missing folder is refused: a mistyped URL never starts the pipeline on an empty store."""
        path = self.sqlite_store_path()
        if path is None or path.parent.is_dir():
            return
        folder = path.parent
        if folder != self.data_dir:
            raise SettingError(
                "NOMARR_STORE_URL",
                f"names {path}, but the folder {folder} does not exist",
                "a file in an existing folder (or unset it: the store then lives in NOMARR_DATA_DIR)",
            )
        if folder.exists() or not folder.parent.is_dir():
            raise SettingError(
                "NOMARR_DATA_DIR",
                f"is {folder}: {'not a folder' if folder.exists() else 'its parent folder does not exist'}",
                "a folder whose parent exists (it is created), or unset it for .nomarr/ in this folder",
            )
        folder.mkdir(exist_ok=True)


def _check_store_url(url: str) -> None:
    try:
        if store_engine(url) == "sqlite":
            SqliteStore.from_url(url)
    except StoreError as error:
        raise SettingError(
            "NOMARR_STORE_URL",
            f"cannot be used: {error}",
            "one of those, or unset it for the embedded store in NOMARR_DATA_DIR",
        ) from None


def default_store_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'nomarr.sqlite3').absolute()}"


def _env_number(name: str, default: float, kind: type[float] | type[int], low: float, high: float) -> float:
    raw = _env_str(name)
    if raw is None:
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        expected = f"{'a whole number' if kind is int else 'a number'} from {low:g} to {high:g}"
        raise SettingError(name, f"is {raw!r}, not {expected}", expected)
    return value


def tag_settings() -> dict[str, Any]:
    """What the tag writer puts into the fields players read: the ``tagging`` resource's fields."""
    return dict(
        standard_mood=_env_bool("NOMARR_STANDARD_MOOD", True),
        mood_tier=_env_choice("NOMARR_MOOD_TIER", "mood-regular", TIER_NAMES),
        replace_mood=_env_bool("NOMARR_REPLACE_MOOD", False),
        genre_head=_env_str("NOMARR_GENRE_HEAD"),
        genre_count=_env_number("NOMARR_GENRE_COUNT", 3, int, 1, 100),
        genre_threshold=_env_number("NOMARR_GENRE_THRESHOLD", 0.8, float, 0.0, 1.0),
        genre_form=_env_choice("NOMARR_GENRE_FORM", "parent-style", GENRE_FORMS),
        replace_genre=_env_bool("NOMARR_REPLACE_GENRE", False),
        score_heads=(_env_str("NOMARR_SCORE_HEADS") or "mood").strip(),
        max_labels_per_head=_env_number("NOMARR_MAX_LABELS_PER_HEAD", DEFAULT_MAX_LABELS, int, 0, 100_000),
    )
