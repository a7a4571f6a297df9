"""Helpers for the tag-writing tests: fixture audio made with ffmpeg, foreign tags, decoded-audio
hashes, and real ways to make a write fail (immutable paths, a tiny full filesystem)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mutagen
import pytest
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3, TIT2, TMOO, TPE1, TXXX, Encoding
from mutagen.mp4 import MP4Cover, MP4FreeForm, MP4Tags

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import MP4_FREEFORM_PREFIX, OpenedAudio, TagInput, normalize_tags
from nomarr_pipeline.tagging.standard import planned_tags

# extension -> ffmpeg audio encoder
FORMATS: dict[str, str] = {
    "mp3": "libmp3lame",
    "m4a": "aac",
    "flac": "flac",
    "ogg": "libvorbis",
    "opus": "libopus",
    "wav": "pcm_s16le",
    "aiff": "pcm_s16be",
}
USER_MOOD = "user's own mood"

if shutil.which("ffmpeg") is None:  # pragma: no cover - the build machines have ffmpeg
    pytest.skip("ffmpeg is needed to make audio fixtures", allow_module_level=True)


def encode(target: Path, encoder: str, seconds: float = 2.0) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}", "-ac", "2", "-c:a", encoder, str(target)],
        check=True,
    )  # fmt: skip


def add_foreign_tags(path: Path) -> None:
    """Title, artist, a custom field and a mood field, each in the format's native form."""
    audio = mutagen.File(path)
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    if isinstance(tags, ID3):
        tags.add(TIT2(encoding=Encoding.UTF8, text=["Sine Song"]))
        tags.add(TPE1(encoding=Encoding.UTF8, text=["Test Artist"]))
        tags.add(TXXX(encoding=Encoding.UTF8, desc="custom_field", text=["keep me"]))
        tags.add(TMOO(encoding=Encoding.UTF8, text=[USER_MOOD]))
        audio.save(v2_version=4)
    elif isinstance(tags, MP4Tags):
        tags["\xa9nam"] = ["Sine Song"]
        tags["\xa9ART"] = ["Test Artist"]
        tags[MP4_FREEFORM_PREFIX + "custom_field"] = [MP4FreeForm(b"keep me")]
        tags[MP4_FREEFORM_PREFIX + "MOOD"] = [MP4FreeForm(USER_MOOD.encode())]
        audio.save()
    else:
        tags["TITLE"] = ["Sine Song"]
        tags["ARTIST"] = ["Test Artist"]
        tags["CUSTOM_FIELD"] = ["keep me"]
        tags["COMMENT"] = ["a comment", "second comment"]
        tags["MOOD"] = [USER_MOOD]
        audio.save()


def add_cover(path: Path, image: bytes) -> None:
    """``image`` as the front cover, the way each format stores pictures."""
    audio = mutagen.File(path)
    if audio.tags is None:
        audio.add_tags()
    if isinstance(audio.tags, ID3):
        audio.tags.add(APIC(encoding=Encoding.UTF8, mime="image/jpeg", type=3, desc="Cover", data=image))
        audio.save(v2_version=4)
        return
    if isinstance(audio.tags, MP4Tags):
        audio.tags["covr"] = [MP4Cover(image, imageformat=MP4Cover.FORMAT_JPEG)]
    else:
        picture = Picture()
        picture.type, picture.mime, picture.data = 3, "image/jpeg", image
        if isinstance(audio, FLAC):
            audio.add_picture(picture)
        else:  # Ogg: a base64 FLAC picture block in a comment
            audio.tags["METADATA_BLOCK_PICTURE"] = [base64.b64encode(picture.write()).decode("ascii")]
    audio.save()


def cover_of(path: Path) -> bytes:
    audio = mutagen.File(path)
    if isinstance(audio.tags, ID3):
        return bytes(audio.tags.getall("APIC")[0].data)
    if isinstance(audio.tags, MP4Tags):
        return bytes(audio.tags["covr"][0])
    if isinstance(audio, FLAC):
        return bytes(audio.pictures[0].data)
    return bytes(Picture(base64.b64decode(audio.tags["METADATA_BLOCK_PICTURE"][0])).data)


def write_nom_tags(path: Path, tags: TagInput) -> None:
    """Make the file's ``nom:`` namespace exactly ``tags`` (and merge its standard fields) in
    place, with no temp copy and no checks: how an earlier run or another tool left a file."""
    wanted = normalize_tags(tags)  # refuse bad values before the file is opened for writing
    opened = OpenedAudio(path)
    before = opened.state()
    opened.save(planned_tags(before, wanted), before, into=os.fspath(path))


def decoded_audio_hash(path: Path) -> str:
    """SHA-256 of the decoded PCM: equal hashes mean the audio stream was not touched."""
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0",
         "-f", "s16le", "-acodec", "pcm_s16le", "-"],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    assert pcm, f"ffmpeg decoded nothing from {path}"
    return hashlib.sha256(pcm).hexdigest()


def foreign_tags(path: Path) -> list[tuple[str, str]]:
    """Every tag outside the ``nom:`` namespace, in a comparable form."""
    tags = mutagen.File(path).tags
    if tags is None:
        return []
    if isinstance(tags, ID3):
        return sorted(
            (frame.HashKey, repr(frame))
            for frame in tags.values()
            if not (frame.FrameID == "TXXX" and keys.is_nom_key(frame.desc))
        )
    if isinstance(tags, MP4Tags):
        return sorted(
            (key, repr(value))
            for key, value in tags.items()
            if not (key.startswith(MP4_FREEFORM_PREFIX) and keys.is_nom_key(key[len(MP4_FREEFORM_PREFIX) :]))
        )
    return [(field, value) for field, value in tags if not keys.is_nom_key(field)]


def temp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".nomarr-tmp-" in p.name]


def stat_of(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` truly unwritable, even for root: chmod for ordinary users, the immutable
    attribute (``chattr +i``) when running as root, where permission bits are bypassed."""
    if os.geteuid() != 0:
        old_mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(old_mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a path unwritable")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def tiny_filesystem(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. ``"96k"``) so that writes hit ENOSPC for real."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill up")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); disk-full test skipped")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
