"""Shared fixtures: an isolated data folder and environment for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

# A running model site for `models fetch` tests, wherever they are.
from nomarr_pipeline_tests.ml.model_server import model_site  # noqa: F401


@pytest.fixture(autouse=True)
def isolated_nomarr_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the developer's own store, library or exports."""
    data = tmp_path / "nomarr-data"
    monkeypatch.setenv("NOMARR_DATA_DIR", str(data))
    for name in (
        "NOMARR_STORE_URL",
        "NOMARR_LIBRARY_ROOTS",
        "NOMARR_MODELS_DIR",
        "NOMARR_MODELS_URL",
        "NOMARR_EXPORT_DIR",
        "NOMARR_FILE_WRITE_MODE",
        "NOMARR_AUTO_WRITE_TAGS",
        "NOMARR_WRITE_RAW_SCORES",
        "NOMARR_ARANGO_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    return data
