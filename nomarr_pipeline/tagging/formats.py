"""Reading and writing the ``nom:`` namespace in each container format, with mutagen.

Where each key lives:

- MP3, WAV, AIFF — an ID3v2 tag (WAV: the ``id3 `` chunk, AIFF: the ``ID3 `` chunk), one
  ``TXXX`` frame per key with ``desc = key`` and UTF-8 text; a list is one frame with several
  text values. Saved as ID3v2.4 (mutagen upgrades an older v2.3 tag on load, so other frames
  keep their values but are written in v2.4 form).
- MP4/M4A/M4B — one freeform atom ``----:com.apple.iTunes:<key>`` per key holding one UTF-8
  ``data`` atom per value.
- FLAC, Ogg Vorbis, Ogg Opus — Vorbis comments, one ``KEY=value`` entry per value. Vorbis
  field names are case-insensitive, so here a field is in the namespace when its name starts
  with ``nom:`` in any case, and setting a key replaces every field whose name equals it
  ignoring case. Keys are written in their canonical (lower-case-prefixed) spelling; a file
  whose fields were re-cased by another tool reads back with that tool's spelling.

The optional standard mood field mirrors the ``nom:mood-regular`` tier into ID3 ``TMOO``,
Vorbis ``MOOD`` or MP4 ``----:com.apple.iTunes:MOOD``. It is written only when asked for and
only when the regular tier is in the tag set; otherwise the field is left exactly as it was
(it may be the user's own).

Nothing outside the namespace is changed: foreign frames, atoms and comments are kept as they
are, in their order.
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
from mutagen.id3 import ID3, TMOO, TXXX, Encoding
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm, MP4Tags
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from nomarr_pipeline.tagging import keys

TagInput = Mapping[str, str | list[str]]
NomTags = dict[str, list[str]]

MP4_FREEFORM_PREFIX = "----:com.apple.iTunes:"
MP4_MOOD_KEY = MP4_FREEFORM_PREFIX + "MOOD"
VORBIS_MOOD_FIELD = "MOOD"


class UnsupportedFormatError(ValueError):
    """The file's extension is not one the tag writer knows."""


class TagValueError(ValueError):
    """A value that cannot round-trip through every format (empty, NUL, not a string)."""


@dataclass(frozen=True)
class AudioProperties:
    """Stream facts that tag writing must never change."""

    length: float
    sample_rate: int | None
    channels: int | None
    bitrate: int | None


@dataclass(frozen=True)
class FileTagState:
    """What one open of a file tells the writer: its namespace, mood field and stream."""

    nom_tags: NomTags
    standard_mood: list[str] | None
    properties: AudioProperties


def normalize_tags(tags: TagInput) -> NomTags:
    """Every value as a list of strings; empty lists dropped (an empty tier is no tier).

    Raises :class:`TagValueError` for a key outside the namespace or a value that some format
    could not store exactly.
    """
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


# ---- per-format adapters ---------------------------------------------------------------
# Each adapter works on an opened mutagen object so that a caller can read, change and save
# with one parse of the file.


class _TagAdapter:
    opener: Callable[[str], mutagen.FileType]

    def open(self, path: str) -> mutagen.FileType:
        audio = self.opener(path)
        if audio is None:  # mutagen.File(options=...) found no matching format
            raise mutagen.MutagenError(f"{path}: not a recognised audio file")
        return audio

    def read(self, audio: Any) -> NomTags:
        raise NotImplementedError

    def read_standard_mood(self, audio: Any) -> list[str] | None:
        raise NotImplementedError

    def apply(self, audio: Any, tags: NomTags, *, standard_mood: bool) -> None:
        raise NotImplementedError

    def save(self, audio: Any, target: str | BinaryIO) -> None:
        audio.save(target)


class _Id3Adapter(_TagAdapter):
    def __init__(self, opener: Callable[..., mutagen.FileType]) -> None:
        self.opener = opener

    def read(self, audio: Any) -> NomTags:
        tags: ID3 | None = audio.tags
        if tags is None:
            return {}
        return {
            frame.desc: [str(text) for text in frame.text]
            for frame in tags.getall("TXXX")
            if keys.is_nom_key(frame.desc)
        }

    def read_standard_mood(self, audio: Any) -> list[str] | None:
        if audio.tags is None or "TMOO" not in audio.tags:
            return None
        return [str(text) for text in audio.tags["TMOO"].text]

    def apply(self, audio: Any, tags: NomTags, *, standard_mood: bool) -> None:
        if audio.tags is None:
            audio.add_tags()
        id3: ID3 = audio.tags
        for frame in list(id3.getall("TXXX")):
            if keys.is_nom_key(frame.desc) and frame.desc not in tags:
                del id3[frame.HashKey]
        for key, values in tags.items():
            id3.add(TXXX(encoding=Encoding.UTF8, desc=key, text=values))
        if standard_mood and keys.MOOD_REGULAR in tags:
            id3.add(TMOO(encoding=Encoding.UTF8, text=tags[keys.MOOD_REGULAR]))

    def save(self, audio: Any, target: str | BinaryIO) -> None:
        audio.save(target, v2_version=4)


class _Mp4Adapter(_TagAdapter):
    opener = staticmethod(MP4)

    def read(self, audio: Any) -> NomTags:
        tags: MP4Tags | None = audio.tags
        if tags is None:
            return {}
        found: NomTags = {}
        for atom_key, values in tags.items():
            if atom_key.startswith(MP4_FREEFORM_PREFIX):
                key = atom_key[len(MP4_FREEFORM_PREFIX) :]
                if keys.is_nom_key(key):
                    found[key] = [bytes(value).decode("utf-8", "replace") for value in values]
        return found

    def read_standard_mood(self, audio: Any) -> list[str] | None:
        if audio.tags is None or MP4_MOOD_KEY not in audio.tags:
            return None
        return [bytes(value).decode("utf-8", "replace") for value in audio.tags[MP4_MOOD_KEY]]

    @staticmethod
    def _freeform(values: list[str]) -> list[MP4FreeForm]:
        return [MP4FreeForm(v.encode("utf-8"), dataformat=AtomDataType.UTF8) for v in values]

    def apply(self, audio: Any, tags: NomTags, *, standard_mood: bool) -> None:
        if audio.tags is None:
            audio.add_tags()
        mp4_tags: MP4Tags = audio.tags
        for atom_key in list(mp4_tags.keys()):
            if atom_key.startswith(MP4_FREEFORM_PREFIX):
                key = atom_key[len(MP4_FREEFORM_PREFIX) :]
                if keys.is_nom_key(key) and key not in tags:
                    del mp4_tags[atom_key]
        for key, values in tags.items():
            mp4_tags[MP4_FREEFORM_PREFIX + key] = self._freeform(values)
        if standard_mood and keys.MOOD_REGULAR in tags:
            mp4_tags[MP4_MOOD_KEY] = self._freeform(tags[keys.MOOD_REGULAR])


class _VorbisAdapter(_TagAdapter):
    def __init__(self, opener: Callable[[str], mutagen.FileType]) -> None:
        self.opener = opener

    def read(self, audio: Any) -> NomTags:
        found: NomTags = {}
        for field, value in audio.tags or []:
            if keys.is_nom_key(field):
                found.setdefault(field, []).append(value)
        return found

    def read_standard_mood(self, audio: Any) -> list[str] | None:
        values = [v for f, v in audio.tags or [] if f.lower() == VORBIS_MOOD_FIELD.lower()]
        return values or None

    def apply(self, audio: Any, tags: NomTags, *, standard_mood: bool) -> None:
        if audio.tags is None:
            audio.add_tags()
        comments = audio.tags
        replace_mood = standard_mood and keys.MOOD_REGULAR in tags
        kept = [
            (field, value)
            for field, value in comments
            if not keys.is_nom_key(field)
            and not (replace_mood and field.lower() == VORBIS_MOOD_FIELD.lower())
        ]
        added = [(key, value) for key, values in tags.items() for value in values]
        if replace_mood:
            added += [(VORBIS_MOOD_FIELD, value) for value in tags[keys.MOOD_REGULAR]]
        # Slice assignment keeps the comment object (and its vendor string); foreign fields
        # keep their order, namespace fields go after them.
        comments[:] = kept + added


def _open_ogg(path: str) -> mutagen.FileType:
    # ".ogg" is a container name: the stream inside may be Vorbis or Opus.
    return mutagen.File(path, options=[OggVorbis, OggOpus])


_ID3_MP3 = _Id3Adapter(MP3)
_MP4 = _Mp4Adapter()
_FLAC = _VorbisAdapter(FLAC)
_OGG = _VorbisAdapter(_open_ogg)

_ADAPTERS: dict[str, _TagAdapter] = {
    ".mp3": _ID3_MP3,
    ".m4a": _MP4,
    ".m4b": _MP4,
    ".mp4": _MP4,
    ".flac": _FLAC,
    ".ogg": _OGG,
    ".oga": _OGG,
    ".opus": _VorbisAdapter(OggOpus),
    ".wav": _Id3Adapter(WAVE),
    ".aif": _Id3Adapter(AIFF),
    ".aiff": _Id3Adapter(AIFF),
    ".aifc": _Id3Adapter(AIFF),
}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_ADAPTERS)


def _adapter_for(path: str | os.PathLike[str]) -> _TagAdapter:
    extension = Path(path).suffix.lower()
    try:
        return _ADAPTERS[extension]
    except KeyError:
        raise UnsupportedFormatError(
            f"{os.fspath(path)}: cannot write tags to {extension or 'extension-less'} files "
            f"(supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
        ) from None


def _properties(audio: Any) -> AudioProperties:
    info = audio.info
    return AudioProperties(
        length=float(info.length),
        sample_rate=getattr(info, "sample_rate", None),
        channels=getattr(info, "channels", None),
        bitrate=getattr(info, "bitrate", None) or None,
    )


class OpenedAudio:
    """One parse of a file: read its state, then save changed tags into it or into a byte-for-byte
    copy of it (mutagen writes the in-memory tags into whichever file it is given)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._adapter = _adapter_for(path)
        self._audio = self._adapter.open(self.path)

    def state(self) -> FileTagState:
        return FileTagState(
            nom_tags=self._adapter.read(self._audio),
            standard_mood=self._adapter.read_standard_mood(self._audio),
            properties=_properties(self._audio),
        )

    def save(self, tags: NomTags, *, standard_mood: bool, into: str | BinaryIO) -> None:
        """Make the namespace exactly ``tags`` (from :func:`normalize_tags`) and save into
        ``into``: the file itself, or an open read-write copy holding the same bytes."""
        self._adapter.apply(self._audio, tags, standard_mood=standard_mood)
        self._adapter.save(self._audio, into)


def read_file_state(path: str | os.PathLike[str]) -> FileTagState:
    """Namespace, standard mood field and audio properties from one parse of ``path``."""
    return OpenedAudio(path).state()


def read_nom_tags(path: str | os.PathLike[str]) -> NomTags:
    """Every ``nom:`` key in the file with its values, as stored."""
    adapter = _adapter_for(path)
    return adapter.read(adapter.open(os.fspath(path)))


def write_nom_tags(path: str | os.PathLike[str], tags: TagInput, *, standard_mood: bool = False) -> None:
    """Make the file's ``nom:`` namespace exactly ``tags``, in place.

    Sets every given key, removes namespace keys not given (stale), leaves every other tag
    alone. This writes the file directly; :func:`nomarr_pipeline.tagging.atomic.write_file_tags`
    is the safe entry point for library files.
    """
    wanted = normalize_tags(tags)  # refuse bad values before the file is opened for writing
    opened = OpenedAudio(path)
    opened.save(wanted, standard_mood=standard_mood, into=opened.path)
