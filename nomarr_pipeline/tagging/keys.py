"""The ``nom:`` namespace: the keys Nomarr writes into audio files (docs/ARCHITECTURE.md §9).

In ``nom:{raw|cal}:{model_key}:{head_name}:{label}`` only the label may hold ``:``, so a key
splits back on its first four colons.

One key serves every format, so it must be a legal Vorbis field name (printable ASCII
``0x20..0x7D`` without ``=``; MP4 wants latin-1): other label characters, and ``%``, are
percent-encoded as UTF-8 (``%C3%A9`` for ``é``). Vorbis field names are case-insensitive, so
where two labels of one head differ only in case, their upper-case letters are encoded too
(``Rock`` becomes ``%52ock`` beside ``rock``); every other label keeps its spelling.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Literal

NAMESPACE = "nom:"
MOOD_STRICT = "nom:mood-strict"
MOOD_REGULAR = "nom:mood-regular"
MOOD_LOOSE = "nom:mood-loose"
VERSION = "nom:version"
# Tier names as stored in ``library_files.mood_tiers`` -> the tag key that carries them.
MOOD_TIER_KEYS = {"mood-strict": MOOD_STRICT, "mood-regular": MOOD_REGULAR, "mood-loose": MOOD_LOOSE}

# The standard fields players read, outside the namespace. The values the pipeline put in one
# are remembered in the file itself, under its ``nom:written-*`` key, so that only those are
# ever replaced and the user's own values stay.
MOOD = "MOOD"
GENRE = "GENRE"
WRITTEN_KEYS = {MOOD: "nom:written-mood", GENRE: "nom:written-genre"}
STANDARD_FIELDS = tuple(WRITTEN_KEYS)

ScoreKind = Literal["raw", "cal"]
SCORE_KINDS: tuple[ScoreKind, ...] = ("raw", "cal")


class TagKeyError(ValueError):
    """A key part that cannot be placed in the namespace, or a score with no string form."""


def is_nom_key(key: str) -> bool:
    """Whether ``key`` belongs to the namespace, in any case (Vorbis field names have none)."""
    return key[: len(NAMESPACE)].lower() == NAMESPACE


def _is_plain(char: str, upper_too: bool = False) -> bool:
    return " " <= char <= "}" and char not in "=%" and not (upper_too and "A" <= char <= "Z")


def escape_label(label: str, *, upper_too: bool = False) -> str:
    """``label`` with the characters a key cannot hold (and, ``upper_too``, A-Z) percent-encoded."""
    return "".join(
        char if _is_plain(char, upper_too) else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in label
    )


def _check_name_part(what: str, value: str) -> None:
    if not value or ":" in value or not all(_is_plain(char) for char in value):
        raise TagKeyError(
            f"{what} {value!r} cannot be used in a tag key: it must be non-empty printable "
            "ASCII without ':', '=', '%' or '~'"
        )


# Called per file with the same few heads: one computation per head's label set.
@functools.lru_cache(maxsize=1024)
def score_keys(kind: ScoreKind, model_key: str, head_name: str, labels: tuple[str, ...]) -> dict[str, str]:
    """The key of each of ``labels`` (every label of one head): no two equal ignoring case."""
    if kind not in SCORE_KINDS:
        raise TagKeyError(f"score kind must be one of {SCORE_KINDS}, not {kind!r}")
    _check_name_part("model_key", model_key)
    _check_name_part("head_name", head_name)
    if not all(labels):
        raise TagKeyError("a label must be non-empty")
    folded = {label: escape_label(label).lower() for label in labels}
    seen = Counter(folded.values())
    twins = {label for label, fold in folded.items() if seen[fold] > 1}
    prefix = f"{NAMESPACE}{kind}:{model_key}:{head_name}:"
    return {label: prefix + escape_label(label, upper_too=label in twins) for label in labels}


def format_score(value: float) -> str:
    """The one string form of a score (six decimals, fixed point); non-finite values have none."""
    number = float(value)
    if not math.isfinite(number):
        raise TagKeyError(f"score {value!r} is not a finite number")
    text = f"{number:.6f}"
    return "0.000000" if text == "-0.000000" else text  # one spelling, so reads compare equal
