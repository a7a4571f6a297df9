"""Reading and writing the ``nom:`` namespace in each container format, with mutagen.

- MP3, WAV, AIFF: an ID3v2 tag saved as v2.4, one ``TXXX`` frame per key (``desc`` = key,
  UTF-8, a list as several text values);
- MP4/M4A/M4B: one freeform atom ``----:com.apple.iTunes:<key>`` per key, a UTF-8 ``data``
  atom per value;
- FLAC, Ogg Vorbis, Ogg Opus: one Vorbis comment ``KEY=value`` per value. Field names are
  case-insensitive, so a field whose name starts with ``nom:`` in any case is in the namespace.

With ``standard_mood`` the regular tier is mirrored into ID3 ``TMOO``, Vorbis ``MOOD`` or MP4
``----:com.apple.iTunes:MOOD``; without it, or without that tier, the field is left as it is
(it may be the user's own). Tags outside the namespace are never changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import TMOO, TXXX, Encoding
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from nomarr_pipeline.tagging import keys

TagInput = Mapping[str, str | list[str]]
NomTags = dict[str, list[str]]
# Stream facts a tag write must never change: (length in s, sample rate, channels, bitrate).
AudioProperties = tuple[float, int | None, int | None, int | None]

MP4_FREEFORM_PREFIX = "----:com.apple.iTunes:"
MP4_MOOD_KEY = MP4_FREEFORM_PREFIX + "MOOD"


class UnsupportedFormatError(ValueError):
    """The file's extension is not one the tag writer knows."""


class TagValueError(ValueError):
    """A value that cannot round-trip through every format (empty, NUL, not a string)."""


@dataclass(frozen=True)
class FileTagState:
    """What one open of a file tells the writer."""

    nom_tags: NomTags
    standard_mood: list[str] | None
    properties: AudioProperties


def normalize_tags(tags: TagInput) -> NomTags:
    """Every value as a list of strings, empty lists dropped (an empty tier is no tier); raises
    :class:`TagValueError` for a key outside the namespace or a value some format cannot hold."""
    normalized: NomTags = {}
    for key, value in tags.items():
        if not keys.is_nom_key(key):
            raise TagValueError(f"{key!r} is not in the {keys.NAMESPACE} namespace")
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            if not isinstance(item, str) or not item or "\x00" in item:
                raise TagValueError(f"value {item!r} of {key!r} must be a non-empty string without NUL")
        if values:
            normalized[key] = values
    return normalized


class _Format:
    """How one container holds the namespace and the standard mood field."""

    def __init__(self, opener: Callable[[str], Any]) -> None:
        self.open = opener

    def read(self, audio: Any) -> tuple[NomTags, list[str] | None]:
        raise NotImplementedError

    def apply(self, audio: Any, tags: NomTags, mood: list[str] | None) -> None:
        raise NotImplementedError

    def save(self, audio: Any, into: str | BinaryIO) -> None:
        audio.save(into)


class _Id3(_Format):
    def read(self, audio: Any) -> tuple[NomTags, list[str] | None]:
        tags = audio.tags
        if tags is None:
            return {}, None
        nom = {f.desc: [str(t) for t in f.text] for f in tags.getall("TXXX") if keys.is_nom_key(f.desc)}
        return nom, [str(t) for t in tags["TMOO"].text] if "TMOO" in tags else None

    def apply(self, audio: Any, tags: NomTags, mood: list[str] | None) -> None:
        if audio.tags is None:
            audio.add_tags()
        for frame in audio.tags.getall("TXXX"):
            if keys.is_nom_key(frame.desc):
                del audio.tags[frame.HashKey]
        for key, values in tags.items():
            audio.tags.add(TXXX(encoding=Encoding.UTF8, desc=key, text=values))
        if mood:
            audio.tags.add(TMOO(encoding=Encoding.UTF8, text=mood))

    def save(self, audio: Any, into: str | BinaryIO) -> None:
        audio.save(into, v2_version=4)


def _freeform_nom_key(name: str) -> str | None:
    key = name[len(MP4_FREEFORM_PREFIX) :]
    return key if name.startswith(MP4_FREEFORM_PREFIX) and keys.is_nom_key(key) else None


class _Mp4(_Format):
    @staticmethod
    def _text(values: list[Any]) -> list[str]:
        return [bytes(value).decode("utf-8", "replace") for value in values]

    def read(self, audio: Any) -> tuple[NomTags, list[str] | None]:
        tags = audio.tags or {}
        nom = {key: self._text(values) for name, values in tags.items() if (key := _freeform_nom_key(name))}
        return nom, self._text(tags[MP4_MOOD_KEY]) if MP4_MOOD_KEY in tags else None

    def apply(self, audio: Any, tags: NomTags, mood: list[str] | None) -> None:
        if audio.tags is None:
            audio.add_tags()
        for name in [name for name in audio.tags if _freeform_nom_key(name)]:
            del audio.tags[name]
        wanted = {MP4_FREEFORM_PREFIX + key: values for key, values in tags.items()}
        for name, values in (wanted | ({MP4_MOOD_KEY: mood} if mood else {})).items():
            audio.tags[name] = [MP4FreeForm(v.encode(), dataformat=AtomDataType.UTF8) for v in values]


class _Vorbis(_Format):
    def read(self, audio: Any) -> tuple[NomTags, list[str] | None]:
        nom: NomTags = {}
        mood = [value for field, value in audio.tags or [] if field.upper() == "MOOD"]
        for field, value in audio.tags or []:
            if keys.is_nom_key(field):
                nom.setdefault(field, []).append(value)
        return nom, mood or None

    def apply(self, audio: Any, tags: NomTags, mood: list[str] | None) -> None:
        if audio.tags is None:
            audio.add_tags()
        kept = [
            (f, v) for f, v in audio.tags if not keys.is_nom_key(f) and not (mood and f.upper() == "MOOD")
        ]
        added = [(key, value) for key, values in tags.items() for value in values]
        # In place: the comment block keeps its vendor string; foreign fields keep their order.
        audio.tags[:] = kept + added + [("MOOD", value) for value in mood or []]


def _open_ogg(path: str) -> Any:
    # ".ogg" names a container: the stream inside may be Vorbis or Opus.
    return mutagen.File(path, options=[OggVorbis, OggOpus])


_FORMATS: dict[str, _Format] = {
    ".mp3": _Id3(MP3),
    ".wav": _Id3(WAVE),
    ".aif": _Id3(AIFF),
    ".aiff": _Id3(AIFF),
    ".aifc": _Id3(AIFF),
    ".m4a": _Mp4(MP4),
    ".m4b": _Mp4(MP4),
    ".mp4": _Mp4(MP4),
    ".flac": _Vorbis(FLAC),
    ".ogg": _Vorbis(_open_ogg),
    ".oga": _Vorbis(_open_ogg),
    ".opus": _Vorbis(OggOpus),
}


class OpenedAudio:
    """One parse of a file: read its state, then save changed tags into it or into a
    byte-for-byte copy of it (mutagen writes its in-memory tags into whichever file it gets)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        extension = Path(path).suffix.lower()
        if extension not in _FORMATS:
            raise UnsupportedFormatError(
                f"{self.path}: cannot write tags to {extension or 'extension-less'} files "
                f"(supported: {', '.join(sorted(_FORMATS))})"
            )
        self._format = _FORMATS[extension]
        self._audio = self._format.open(self.path)
        if self._audio is None:  # mutagen.File(options=...) recognised none of them
            raise mutagen.MutagenError(f"{self.path}: not a recognised audio file")

    def state(self) -> FileTagState:
        nom, mood = self._format.read(self._audio)
        info = self._audio.info
        properties = (float(info.length), getattr(info, "sample_rate", None), getattr(info, "channels", None),
                      getattr(info, "bitrate", None) or None)  # fmt: skip
        return FileTagState(nom, mood, properties)

    def save(self, tags: NomTags, *, standard_mood: bool, into: str | BinaryIO) -> None:
        """Make the namespace exactly ``tags`` (normalized) and save into ``into``: the file
        itself, or an open read-write copy holding the same bytes."""
        mood = tags.get(keys.MOOD_REGULAR) if standard_mood else None
        self._format.apply(self._audio, tags, mood)
        self._format.save(self._audio, into)


def read_nom_tags(path: str | os.PathLike[str]) -> NomTags:
    """Every ``nom:`` key in the file with its values, as stored."""
    return OpenedAudio(path).state().nom_tags
