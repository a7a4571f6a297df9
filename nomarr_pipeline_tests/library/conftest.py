from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest

from nomarr_pipeline.store import Store, open_store


def write_wav(path: Path, seconds: float = 0.5, freq: float = 440.0, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


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
