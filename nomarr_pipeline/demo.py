"""A demo library of generated audio in every supported format (ffmpeg encodes them)."""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import wave
from pathlib import Path

# (file name, ffmpeg lavfi source) — different tones and noise so model outputs differ.
DEMO_TRACKS = [
    ("Calm/01 low hum.mp3", "sine=frequency=110:duration=8"),
    ("Calm/02 soft tone.flac", "sine=frequency=220:duration=8"),
    ("Calm/03 pad.ogg", "sine=frequency=330:duration=8"),
    ("Bright/01 whistle.m4a", "sine=frequency=1760:duration=8"),
    ("Bright/02 chirp.opus", "sine=frequency=2640:duration=8"),
    ("Bright/03 tone.wav", "sine=frequency=880:duration=8"),
    ("Noise/01 pink.mp3", "anoisesrc=color=pink:duration=8:amplitude=0.3"),
    ("Noise/02 white.flac", "anoisesrc=color=white:duration=8:amplitude=0.2"),
    ("Noise/03 brown.aiff", "anoisesrc=color=brown:duration=8:amplitude=0.4"),
]


def build_demo_library(dest: Path) -> Path:
    """Create (once) the demo library under ``dest`` and return its folder."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is needed to generate the demo library: apt-get install ffmpeg")
    for name, source in DEMO_TRACKS:
        target = dest / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "2", str(tmp)],
            check=True,
        )
        tmp.replace(target)
    return dest


def write_wav(path: Path, seconds: float = 0.5, freq: float = 440.0, rate: int = 8000) -> Path:
    """A mono 16-bit sine WAV written with the standard library (no ffmpeg needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path
