"""The demo: a library of generated audio in every supported format (ffmpeg encodes it) and
tiny real Essentia models (``nomarr_pipeline.ml.demo_models``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# (file name, ffmpeg lavfi source, codec arguments) — different tones and noise so model
# outputs differ; one file per extension the scanner and the tag writers support.
DEMO_TRACKS: list[tuple[str, str, tuple[str, ...]]] = [
    ("Calm/01 low hum.mp3", "sine=frequency=110:duration=8", ()),
    ("Calm/02 soft tone.flac", "sine=frequency=220:duration=8", ()),
    ("Calm/03 pad.ogg", "sine=frequency=330:duration=8", ("-c:a", "libvorbis")),
    ("Calm/04 drone.oga", "sine=frequency=165:duration=8", ("-c:a", "libvorbis")),
    ("Bright/01 whistle.m4a", "sine=frequency=1760:duration=8", ("-c:a", "aac")),
    ("Bright/02 chirp.opus", "sine=frequency=2640:duration=8", ("-c:a", "libopus")),
    ("Bright/03 tone.wav", "sine=frequency=880:duration=8", ()),
    ("Bright/04 bell.mp4", "sine=frequency=1320:duration=8", ("-c:a", "aac")),
    ("Noise/01 pink.mp3", "anoisesrc=color=pink:duration=8:amplitude=0.3", ()),
    ("Noise/02 white.flac", "anoisesrc=color=white:duration=8:amplitude=0.2", ()),
    ("Noise/03 brown.aiff", "anoisesrc=color=brown:duration=8:amplitude=0.4", ()),
    ("Noise/04 rain.aif", "anoisesrc=color=pink:duration=8:amplitude=0.1", ()),
    ("Spoken/01 chapter.m4b", "anoisesrc=color=brown:duration=8:amplitude=0.2", ("-c:a", "aac")),
]


def configure_demo_environment(folder: Path) -> dict[str, str]:
    """Point every NOMARR_* setting at the demo folder: the demo never touches the user's own store,
    library or exports; its runs go to an instance of its own unless DAGSTER_HOME names one."""
    data = folder / "data"
    env = {
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(data / "dagster_home"),
        "NOMARR_DATA_DIR": str(data),
        "NOMARR_STORE_URL": f"sqlite:///{data / 'nomarr.sqlite3'}",
        "NOMARR_EXPORT_DIR": str(data / "calibration"),
        "NOMARR_LIBRARY_ROOTS": str(folder / "library"),
        "NOMARR_MODELS_DIR": str(folder / "models"),
        "NOMARR_FILE_WRITE_MODE": "full",
        "NOMARR_AUTO_WRITE_TAGS": "true",
        "NOMARR_WRITE_RAW_SCORES": "false",
    }
    os.environ.update(env)
    return env


def build_demo_library(dest: Path) -> Path:
    """Create (once) the demo library under ``dest`` and return its folder."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is needed to generate the demo library: apt-get install ffmpeg")
    for name, source, codec in DEMO_TRACKS:
        target = dest / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # Encode to a hidden name first: an interrupted demo never leaves a truncated file
        # that the scanner would take for a real (broken) track.
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "2", *codec, str(tmp)],
            check=True,
        )
        tmp.replace(target)
    return dest
