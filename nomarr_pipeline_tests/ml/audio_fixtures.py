"""Generated audio files for tests: deterministic per seed, any format ffmpeg can encode.

Each seed gives a different mix of tones, a different noise colour and a different
loudness envelope, so models see different spectra from different files.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100

# Output container (by file suffix) → ffmpeg codec arguments.
CODECS: dict[str, list[str]] = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".flac": ["-c:a", "flac"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    ".m4a": ["-c:a", "aac", "-b:a", "128k"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "4"],
    ".opus": ["-c:a", "libopus", "-b:a", "96k"],
}
AUDIO_FORMATS: tuple[str, ...] = tuple(CODECS)


def synthesize(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples in [-1, 1]."""
    rng = np.random.default_rng(seed)
    count = max(1, int(seconds * sample_rate))
    t = np.arange(count) / sample_rate
    signal = np.zeros(count)
    for _ in range(int(rng.integers(1, 5))):
        frequency = float(np.exp(rng.uniform(np.log(60.0), np.log(6000.0))))
        tremolo = 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 4.0) * t)
        signal += rng.uniform(0.2, 1.0) * tremolo * np.sin(2 * np.pi * frequency * t)
    # Coloured noise: white noise smoothed by a seed-dependent moving average.
    noise = rng.normal(0.0, 1.0, count)
    width = int(rng.integers(1, 64))
    noise = np.convolve(noise, np.ones(width) / width, mode="same")
    signal += rng.uniform(0.0, 1.5) * noise / (np.abs(noise).max() or 1.0)
    peak = np.abs(signal).max() or 1.0
    return (signal / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(sample_rate)
        stream.writeframes(pcm.tobytes())


def write_wav(path: Path, seconds: float = 0.5, freq: float = 440.0, rate: int = 8000) -> Path:
    """A mono 16-bit sine WAV (no ffmpeg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_wav(path, 8000 / 32767 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate), rate)
    return path


def make_audio(path: Path, seconds: float, seed: int) -> Path:
    """Write ``seconds`` of seed-determined audio to ``path``; the format follows its suffix."""
    suffix = path.suffix.lower()
    if suffix not in CODECS:
        raise ValueError(f"unsupported fixture format {suffix!r}; use one of {AUDIO_FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = synthesize(seconds, seed)
    if suffix == ".wav":
        _write_wav(path, samples, SAMPLE_RATE)
        return path
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is needed to encode audio fixtures")
    source = path.with_name(f".{path.name}.source.wav")
    _write_wav(source, samples, SAMPLE_RATE)
    try:
        # Opus only takes 48 kHz input; ffmpeg resamples when told the output rate.
        rate = ["-ar", "48000"] if suffix == ".opus" else []
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(source), *CODECS[suffix], *rate, str(path)],
            check=True,
            capture_output=True,
        )
    finally:
        source.unlink(missing_ok=True)
    return path
