"""Configuration from ``NOMARR_*`` environment variables (DESIGN.md §9).

Plain Python so the CLI, the domain code and the Dagster resources read one source of truth.
Secrets (the ArangoDB password) are read here and never put into repr, logs or metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WRITE_MODES = ("none", "minimal", "full")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _env_str(name: str) -> str | None:
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else None


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
    library_roots: tuple[Path, ...]
    models_dir: Path | None
    export_dir: Path
    file_write_mode: str
    auto_write_tags: bool
    write_raw_scores: bool

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env_str("NOMARR_DATA_DIR") or ".nomarr").expanduser().absolute()
        store_url = _env_str("NOMARR_STORE_URL") or default_store_url(data_dir)
        mode = (_env_str("NOMARR_FILE_WRITE_MODE") or "full").lower()
        if mode not in WRITE_MODES:
            raise ValueError(f"NOMARR_FILE_WRITE_MODE must be one of {WRITE_MODES}, got {mode!r}")
        models = _env_str("NOMARR_MODELS_DIR")
        export = _env_str("NOMARR_EXPORT_DIR")
        return cls(
            data_dir=data_dir,
            store_url=store_url,
            arango_db=_env_str("NOMARR_ARANGO_DB") or "nomarr",
            arango_user=_env_str("NOMARR_ARANGO_USER"),
            arango_password=_env_str("NOMARR_ARANGO_PASSWORD"),
            library_roots=tuple(split_roots(_env_str("NOMARR_LIBRARY_ROOTS"))),
            models_dir=Path(models).expanduser().absolute() if models else None,
            export_dir=Path(export).expanduser().absolute() if export else data_dir / "calibration",
            file_write_mode=mode,
            auto_write_tags=_env_bool("NOMARR_AUTO_WRITE_TAGS", False),
            write_raw_scores=_env_bool("NOMARR_WRITE_RAW_SCORES", False),
        )


def default_store_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'nomarr.sqlite3').absolute()}"
