"""Configuration from ``NOMARR_*`` environment variables (DESIGN.md §9).

Plain Python so the CLI, the domain code and the Dagster resources read one source of truth.
Secrets (the ArangoDB and PostgreSQL passwords) are read here and never put into repr, logs or metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WRITE_MODES = ("none", "minimal", "full")
INFERENCE_ENGINES = ("auto", "onnx", "tensorflow")


class SettingError(ValueError):
    """A ``NOMARR_*`` variable whose value cannot work: which one, what is wrong, and what to
    set it to (the command line prints them as its ``error:`` / ``next:`` lines)."""

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.next_step = f"set {variable} to {expected}"


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
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else None


def inference_engine() -> str:
    """``NOMARR_INFERENCE_ENGINE``: which engine runs a model that has both a ``.pb`` and an
    ``.onnx`` (README, "Inference engines")."""
    engine = (_env_str("NOMARR_INFERENCE_ENGINE") or "auto").strip().lower()
    if engine not in INFERENCE_ENGINES:
        raise SettingError("NOMARR_INFERENCE_ENGINE", f"is {engine!r}, not an inference engine",
                           "auto (ONNX Runtime where an .onnx exists), onnx or tensorflow")
    return engine


def split_roots(raw: str | None) -> list[Path]:
    """Library roots from an ``os.pathsep``-separated string; empty parts are ignored."""
    if not raw:
        return []
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]


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
    inference_engine: str

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
        return cls(
            data_dir=data_dir,
            store_url=store_url,
            arango_db=_env_str("NOMARR_ARANGO_DB") or "nomarr",
            arango_user=_env_str("NOMARR_ARANGO_USER"),
            arango_password=_env_str("NOMARR_ARANGO_PASSWORD"),
            pg_password=_env_str("NOMARR_PG_PASSWORD"),
            library_roots=tuple(split_roots(_env_str("NOMARR_LIBRARY_ROOTS"))),
            models_dir=Path(models).expanduser().absolute() if models else None,
            export_dir=Path(export).expanduser().absolute() if export else data_dir / "calibration",
            file_write_mode=mode,
            auto_write_tags=_env_bool("NOMARR_AUTO_WRITE_TAGS", False),
            write_raw_scores=_env_bool("NOMARR_WRITE_RAW_SCORES", False),
            inference_engine=inference_engine(),
        )


    def sqlite_store_path(self) -> Path | None:
        """The file of the embedded store, ``None`` for a database server."""
        from nomarr_pipeline.store import store_engine

        if store_engine(self.store_url) != "sqlite":
            return None
        from nomarr_pipeline.store.sqlite import SqliteStore

        return SqliteStore.from_url(self.store_url).path

    def ensure_store_folder(self) -> None:
        """Create the data folder when the embedded store lives in it (the default); refuse
        an embedded store anywhere else whose folder does not exist, so that a mistyped
        ``NOMARR_STORE_URL`` never creates folders and runs the pipeline on an empty store."""
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
    from nomarr_pipeline.store import StoreError, store_engine

    try:
        if store_engine(url) == "sqlite":
            from nomarr_pipeline.store.sqlite import SqliteStore

            SqliteStore.from_url(url)
    except StoreError as error:
        raise SettingError(
            "NOMARR_STORE_URL",
            f"cannot be used: {error}",
            "one of those, or unset it for the embedded store in NOMARR_DATA_DIR",
        ) from None


def default_store_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'nomarr.sqlite3').absolute()}"
