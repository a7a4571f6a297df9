"""Decoding audio once per file, read-only: 16 kHz mono float32, as every Essentia backbone expects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# Essentia's MonoLoader cannot decode Opus; ffmpeg decodes it to the same raw format.
FFMPEG_SUFFIXES = frozenset({".opus"})
FFMPEG_TIMEOUT_S = 600.0
# The Opus ID header is the first packet of the first Ogg page (byte 28 in practice).
_OGG_OPUS_PROBE_BYTES = 512


class AudioDecodeError(ValueError):
    """The file could not be decoded into audio."""


def decode_with_ffmpeg(path: Path) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioDecodeError(f"ffmpeg is needed to decode {path.suffix} files but is not installed")
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path),
               "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]
    try:
        completed = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S,
                                   stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(f"ffmpeg took more than {FFMPEG_TIMEOUT_S:.0f}s") from None
    if completed.returncode != 0:
        message = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else f"exit code {completed.returncode}"
        raise AudioDecodeError(f"ffmpeg could not decode the file: {detail}")
    return np.frombuffer(completed.stdout, dtype="<f4").astype(np.float32)


def decode_with_essentia(path: Path) -> np.ndarray:
    import essentia.standard as es

    try:
        loader = es.MonoLoader(filename=str(path), sampleRate=SAMPLE_RATE, resampleQuality=4)
        return np.asarray(loader(), dtype=np.float32)
    except RuntimeError as exc:
        raise AudioDecodeError(f"Essentia could not decode the file: {exc}") from exc


def is_ogg_opus(path: Path) -> bool:
    """An Ogg file whose first packet is an Opus header, whatever its extension."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_OGG_OPUS_PROBE_BYTES)
    except OSError:
        return False
    return head.startswith(b"OggS") and b"OpusHead" in head


def load_audio(path: Path) -> np.ndarray:
    """The whole file as 16 kHz mono float32 samples; :class:`AudioDecodeError` if it fails."""
    if not path.is_file():
        raise AudioDecodeError(f"file not found: {path}")
    # MonoLoader on Opus inside .ogg sometimes aborts the whole process instead of failing.
    if path.suffix.lower() in FFMPEG_SUFFIXES or is_ogg_opus(path):
        samples = decode_with_ffmpeg(path)
    else:
        try:
            samples = decode_with_essentia(path)
        except AudioDecodeError as essentia_error:
            # Whatever MonoLoader cannot read, ffmpeg may (other codecs, odd containers).
            try:
                samples = decode_with_ffmpeg(path)
            except AudioDecodeError as ffmpeg_error:
                raise AudioDecodeError(f"{essentia_error}; {ffmpeg_error}") from None
    if samples.size == 0:
        raise AudioDecodeError("the file decodes to no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("the decoded audio contains NaN or infinite samples")
    return samples
