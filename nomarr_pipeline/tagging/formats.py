"""Reading and writing the ``nom:`` namespace and the standard MOOD and GENRE fields in each
container format, with mutagen.

- MP3, WAV, AIFF: an ID3v2 tag, one ``TXXX`` frame per key (``desc`` = key, a list as several
  text values); MOOD in ``TMOO``, GENRE in ``TCON``. A file whose tag is ID3v2.3 stays v2.3
  (``TMOO`` does not exist there: MOOD goes to ``TXXX:MOOD``, as v2.3 taggers write it), with
  multiple values NUL-separated as in v2.4; any other file is saved as v2.4;
- MP4/M4A/M4B: one freeform atom ``----:com.apple.iTunes:<key>`` per key, a UTF-8 ``data``
  atom per value; MOOD in ``----:com.apple.iTunes:MOOD``, GENRE in ``©gen``;
- FLAC, Ogg Vorbis, Ogg Opus: one Vorbis comment ``KEY=value`` per value. Field names are
  case-insensitive, so a field whose name starts with ``nom:`` in any case is in the namespace.

Which values the standard fields get is decided in :mod:`.standard`; here a field is only
rewritten when its values change. Every other tag is left as it is.
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
from mutagen.id3 import TCON, TMOO, TXXX, Encoding
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from nomarr_pipeline.tagging import keys

TagInput = Mapping[str, str | list[str]]
# ``nom:`` keys, and the standard fields (keys.STANDARD_FIELDS) with the values they hold.
NomTags = dict[str, list[str]]
# Stream facts a tag write must never change: (length in s, sample rate, channels, bitrate).
AudioProperties = tuple[float, int | None, int | None, int | None]

MP4_FREEFORM_PREFIX = "----:com.apple.iTunes:"
_MP4_FIELDS = {keys.MOOD: MP4_FREEFORM_PREFIX + "MOOD", keys.GENRE: "\xa9gen"}


class UnsupportedFormatError(ValueError):
    """The file's extension is not one the tag writer knows."""


class TagValueError(ValueError):
    """A value that cannot round-trip through every format (empty, NUL, not a string)."""


@dataclass(frozen=True)
class FileTagState:
    """What one open of a file tells the writer: its ``nom:`` keys, its standard fields (only
    those that hold values) and its audio properties."""

    nom_tags: NomTags
    standard: NomTags
    properties: AudioProperties

    def tags(self) -> NomTags:
        return self.nom_tags | self.standard


def normalize_tags(tags: TagInput) -> NomTags:
    """Every value as a list of strings, empty lists dropped (an empty tier is no tier); raises
    :class:`TagValueError` for a key outside the namespace and the standard fields, or a value
    some format cannot hold."""
    normalized: NomTags = {}
    for key, value in tags.items():
        if not keys.is_nom_key(key) and key not in keys.STANDARD_FIELDS:
            raise TagValueError(f"{key!r} is not in the {keys.NAMESPACE} namespace")
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            if not isinstance(item, str) or not item or "\x00" in item:
                raise TagValueError(f"value {item!r} of {key!r} must be a non-empty string without NUL")
        if values:
            normalized[key] = values
    return normalized


class _Format:
    """How one container holds the namespace and the standard fields."""

    def __init__(self, opener: Callable[[str], Any]) -> None:
        self.open = opener

    def read(self, audio: Any) -> tuple[NomTags, NomTags]:
        raise NotImplementedError

    def apply(self, audio: Any, tags: NomTags, standard: NomTags) -> None:
        """Make the namespace exactly ``tags``; set each field of ``standard`` (``[]``: remove it)."""
        raise NotImplementedError

    def save(self, audio: Any, into: str | BinaryIO) -> None:
        audio.save(into)


class _Id3(_Format):
    @staticmethod
    def _v23(audio: Any) -> bool:
        return audio.tags is not None and tuple(audio.tags.version[:2]) == (2, 3)

    def _frame_keys(self, audio: Any) -> dict[str, str]:
        return {keys.MOOD: "TXXX:MOOD" if self._v23(audio) else "TMOO", keys.GENRE: "TCON"}

    def read(self, audio: Any) -> tuple[NomTags, NomTags]:
        tags = audio.tags
        if tags is None:
            return {}, {}
        nom = {f.desc: [str(t) for t in f.text] for f in tags.getall("TXXX") if keys.is_nom_key(f.desc)}
        frames = self._frame_keys(audio).items()
        standard = {field: [str(t) for t in tags[frame].text] for field, frame in frames
                    if frame in tags and tags[frame].text}  # fmt: skip
        return nom, standard

    def apply(self, audio: Any, tags: NomTags, standard: NomTags) -> None:
        if audio.tags is None:
            audio.add_tags()
        for frame in audio.tags.getall("TXXX"):
            if keys.is_nom_key(frame.desc):
                del audio.tags[frame.HashKey]
        for key, values in tags.items():
            audio.tags.add(TXXX(encoding=Encoding.UTF8, desc=key, text=values))
        frame_keys = self._frame_keys(audio)
        for field, values in standard.items():
            audio.tags.delall(frame_keys[field])
            if values and frame_keys[field] == "TXXX:MOOD":
                audio.tags.add(TXXX(encoding=Encoding.UTF8, desc="MOOD", text=values))
            elif values:
                audio.tags.add((TMOO if field == keys.MOOD else TCON)(encoding=Encoding.UTF8, text=values))

    def save(self, audio: Any, into: str | BinaryIO) -> None:
        audio.save(into, v2_version=3 if self._v23(audio) else 4, v23_sep=None)


def _freeform_nom_key(name: str) -> str | None:
    key = name[len(MP4_FREEFORM_PREFIX) :]
    return key if name.startswith(MP4_FREEFORM_PREFIX) and keys.is_nom_key(key) else None


class _Mp4(_Format):
    @staticmethod
    def _text(values: list[Any]) -> list[str]:
        # Freeform atoms hold bytes; ©gen holds text.
        return [v if isinstance(v, str) else bytes(v).decode("utf-8", "replace") for v in values]

    def read(self, audio: Any) -> tuple[NomTags, NomTags]:
        tags = audio.tags or {}
        nom = {key: self._text(values) for name, values in tags.items() if (key := _freeform_nom_key(name))}
        standard = {field: self._text(tags[atom]) for field, atom in _MP4_FIELDS.items() if tags.get(atom)}
        return nom, standard

    def apply(self, audio: Any, tags: NomTags, standard: NomTags) -> None:
        if audio.tags is None:
            audio.add_tags()
        for name in [name for name in audio.tags if _freeform_nom_key(name)]:
            del audio.tags[name]
        atoms = {MP4_FREEFORM_PREFIX + key: values for key, values in tags.items()}
        for field, values in standard.items():
            audio.tags.pop(_MP4_FIELDS[field], None)
            if values:
                atoms[_MP4_FIELDS[field]] = values
        for atom, values in atoms.items():
            if atom == _MP4_FIELDS[keys.GENRE]:  # ©gen holds text
                audio.tags[atom] = list(values)
            else:
                audio.tags[atom] = [MP4FreeForm(v.encode(), dataformat=AtomDataType.UTF8) for v in values]


class _Vorbis(_Format):
    def read(self, audio: Any) -> tuple[NomTags, NomTags]:
        nom: NomTags = {}
        standard: NomTags = {}
        for field, value in audio.tags or []:
            if keys.is_nom_key(field):
                nom.setdefault(field, []).append(value)
            elif field.upper() in keys.STANDARD_FIELDS:
                standard.setdefault(field.upper(), []).append(value)
        return nom, standard

    def apply(self, audio: Any, tags: NomTags, standard: NomTags) -> None:
        if audio.tags is None:
            audio.add_tags()
        kept = [(f, v) for f, v in audio.tags if not keys.is_nom_key(f) and f.upper() not in standard]
        added = [(key, value) for key, values in (tags | standard).items() for value in values]
        # In place: the comment block keeps its vendor string; foreign fields keep their order.
        audio.tags[:] = kept + added


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
        nom, standard = self._format.read(self._audio)
        info = self._audio.info
        properties = (float(info.length), getattr(info, "sample_rate", None), getattr(info, "channels", None),
                      getattr(info, "bitrate", None) or None)  # fmt: skip
        return FileTagState(nom, standard, properties)

    def save(self, tags: NomTags, before: FileTagState, *, into: str | BinaryIO) -> None:
        """Make the file carry exactly ``tags`` (normalized: ``nom:`` keys and standard fields,
        as :func:`.standard.planned_tags` makes them from ``before``, this file's state) and save
        into ``into``: the file itself, or an open read-write copy holding the same bytes."""
        nom = {key: values for key, values in tags.items() if keys.is_nom_key(key)}
        changed = {field: tags.get(field, []) for field in keys.STANDARD_FIELDS
                   if tags.get(field) != before.standard.get(field)}  # fmt: skip
        self._format.apply(self._audio, nom, changed)
        self._format.save(self._audio, into)

