"""The ``nom:`` tag namespace: every key Nomarr writes into audio files, built and parsed here.

Keys (DESIGN.md §9):

- ``nom:mood-strict``, ``nom:mood-regular``, ``nom:mood-loose`` — multi-valued lists of terms;
- ``nom:version`` — the tagger version that produced the values;
- ``nom:raw:{model_key}:{head_name}:{label}`` — pooled raw model output of one label;
- ``nom:cal:{model_key}:{head_name}:{label}`` — the calibrated value of that label.

``model_key`` and ``head_name`` never contain ``:`` (they come from model file names), so a
score key splits back into its parts on the first four colons; the label takes the rest and
may itself hold ``:``, spaces and punctuation (``Electronic---House``, ``Folk, World, &
Country``).

The same key string is used in every container format, so it must be legal everywhere. The
strictest is Vorbis comments: field names are printable ASCII ``0x20..0x7D`` without ``=``
(MP4 freeform names must also be latin-1). Label characters outside that set, plus ``%``
itself, are therefore percent-encoded as UTF-8 bytes (``%C3%A9`` for ``é``, ``%3D`` for
``=``, ``%7E`` for ``~``). Ordinary labels are left readable, and the encoding is undone
exactly by decoding the percent escapes as UTF-8.

Scores are written with :data:`SCORE_FORMAT` (six decimals, fixed point, no exponent), so a
value read back compares equal as a string to what :func:`format_score` produced.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

NAMESPACE = "nom:"

MOOD_STRICT = "nom:mood-strict"
MOOD_REGULAR = "nom:mood-regular"
MOOD_LOOSE = "nom:mood-loose"
VERSION = "nom:version"

# Tier names as stored in ``library_files.mood_tiers`` -> the tag key that carries them.
MOOD_TIER_KEYS: dict[str, str] = {
    "mood-strict": MOOD_STRICT,
    "mood-regular": MOOD_REGULAR,
    "mood-loose": MOOD_LOOSE,
}

ScoreKind = Literal["raw", "cal"]
SCORE_KINDS: tuple[ScoreKind, ...] = ("raw", "cal")

SCORE_FORMAT = "{:.6f}"

_ESCAPE = "%"


class TagKeyError(ValueError):
    """A key part that cannot be placed in the namespace, or a key that is not a score key."""


def is_nom_key(key: str) -> bool:
    """Whether ``key`` belongs to the namespace. Case-insensitive: Vorbis field names are."""
    return key[: len(NAMESPACE)].lower() == NAMESPACE


def _is_plain_key_char(char: str) -> bool:
    # Printable ASCII allowed in Vorbis field names, minus the escape character itself.
    return " " <= char <= "}" and char not in ("=", _ESCAPE)


def escape_label(label: str) -> str:
    """Percent-encode the characters of ``label`` that some tag format could not store."""
    parts: list[str] = []
    for char in label:
        if _is_plain_key_char(char):
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(parts)


def _check_name_part(what: str, value: str) -> None:
    if not value or ":" in value or not all(_is_plain_key_char(c) for c in value):
        raise TagKeyError(
            f"{what} {value!r} cannot be used in a tag key: it must be non-empty printable "
            "ASCII without ':', '=', '%' or '~'"
        )


# A library repeats the same few thousand (model, head, label) keys for every file it writes.
@functools.lru_cache(maxsize=65536)
def score_key(kind: ScoreKind, model_key: str, head_name: str, label: str) -> str:
    """``nom:{kind}:{model_key}:{head_name}:{escaped label}``."""
    if kind not in SCORE_KINDS:
        raise TagKeyError(f"score kind must be one of {SCORE_KINDS}, not {kind!r}")
    _check_name_part("model_key", model_key)
    _check_name_part("head_name", head_name)
    if not label:
        raise TagKeyError("label must be non-empty")
    return f"{NAMESPACE}{kind}:{model_key}:{head_name}:{escape_label(label)}"


def raw_score_key(model_key: str, head_name: str, label: str) -> str:
    return score_key("raw", model_key, head_name, label)


def calibrated_score_key(model_key: str, head_name: str, label: str) -> str:
    return score_key("cal", model_key, head_name, label)


def format_score(value: float) -> str:
    """The one string form of a score; non-finite values have none."""
    number = float(value)
    if not math.isfinite(number):
        raise TagKeyError(f"score {value!r} is not a finite number")
    text = SCORE_FORMAT.format(number)
    # "-0.000000" and "0.000000" mean the same score; keep one spelling so reads compare equal.
    return "0.000000" if text == "-0.000000" else text
