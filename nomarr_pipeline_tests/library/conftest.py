from __future__ import annotations

from pathlib import Path

import pytest

from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline_tests.ml.audio_fixtures import write_wav

__all__ = ["write_wav"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield engine
    engine.close()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "music"
    write_wav(root / "a.wav")
    write_wav(root / "Artist" / "Album" / "01 song.wav", seconds=1.0)
    write_wav(root / "Artist" / "Album" / "02 song.WAV", freq=220)
    (root / "notes.txt").write_text("not audio")
    return root
