"""The Navidrome kit: what a Navidrome user needs to use the tags in smart playlists.

- ``navidrome-tags.toml``: declares each calibrated score key the writer puts into files
  (``nom:cal:…``, 0..1) as a ``float`` custom tag named after its mood term (``nom_happy``);
  Navidrome reads custom tags only once declared. ``MOOD`` it maps to ``mood`` by default.
- ``playlists/<term>.nsp``: a smart playlist per mood term, matching it exactly in ``mood``
  (``contains`` would find ``happy`` in ``not happy``).

Both go to the export folder, never into a library folder; a new kit replaces the old playlists.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomarr_pipeline.calibration.exports import write_json_atomic, write_text_atomic
from nomarr_pipeline.calibration.tiers import NEGATION, TierConfig
from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.selection import TagOptions

TOML_NAME = "navidrome-tags.toml"
PLAYLISTS = "playlists"
PLAYLIST_LIMIT = 200
_NOT_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class NavidromeKit:
    toml: Path
    playlists: list[Path]
    float_tags: dict[str, list[str]]  # Navidrome tag name -> the file keys it reads


def _slug(text: str) -> str:
    return _NOT_NAME.sub("_", text.lower()).strip("_")


def _heads(calibrations: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(model_key, head_name) -> its calibrated labels."""
    heads: dict[tuple[str, str], list[str]] = defaultdict(list)
    for state in calibrations:
        heads[(state["model_key"], state["head_name"])].append(state["label"])
    return heads


def float_tags(
    calibrations: Iterable[Mapping[str, Any]], options: TagOptions, tiers: TierConfig
) -> dict[str, list[str]]:
    """Navidrome tag name -> aliases (the score keys as Navidrome may see them, lower case) for
    every calibrated score key the writer can put into a file with ``options``."""
    by_label: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (model_key, head_name), labels in _heads(calibrations).items():
        if not options.wants_scores(head_name):
            continue
        names = keys.score_keys("cal", model_key, head_name, tuple(sorted(labels)))
        for label in labels:
            if len(labels) == 2 and tiers.term(head_name, label).startswith(NEGATION):
                continue  # not written (selection: a two-class head's positive label only)
            # As TagLib names it in every format, and as Navidrome's ID3 aliases spell a TXXX frame.
            by_label[(head_name, label)] += [names[label].lower(), f"txxx:{names[label].lower()}"]
    terms = {head_label: tiers.term(*head_label) for head_label in by_label}
    shared = Counter(terms.values())
    tags = {}
    for (head_name, label), aliases in by_label.items():
        term = terms[(head_name, label)]  # a term two heads share: a tag per head's label
        name = f"nom_{_slug(term)}" if shared[term] == 1 else f"nom_{_slug(head_name)}_{_slug(label)}"
        tags[name] = sorted(aliases)
    return dict(sorted(tags.items()))


def mood_terms(calibrations: Iterable[Mapping[str, Any]], tiers: TierConfig) -> list[str]:
    """Every term the mood tiers can hold with these calibrations."""
    return sorted({tiers.term(head_name, label)
                   for (_, head_name), labels in _heads(calibrations).items() if tiers.head_is_mood(head_name)
                   for label in labels})  # fmt: skip


def toml_snippet(tags: Mapping[str, Sequence[str]]) -> str:
    lines = [
        "# nomarr-pipeline: the calibrated mood scores (0..1) it writes into your files, as float",
        "# tags for smart playlists (e.g. {\"gt\": {\"nom_happy\": 0.8}}). Paste into navidrome.toml,",
        "# then run a full scan. MOOD needs nothing here: Navidrome reads it as `mood`.",
    ]
    for name, aliases in tags.items():
        quoted = ", ".join(f'"{alias}"' for alias in aliases)
        lines += ["", f"[Tags.{name}]", f"Aliases = [{quoted}]", 'Type = "float"']
    return "\n".join(lines) + "\n"


def smart_playlist(term: str, tier: str | None) -> dict[str, Any]:
    """Navidrome's smart playlist of the tracks whose MOOD holds ``term``."""
    return {
        "name": f"Mood: {term.title()}",
        "comment": f"Tracks tagged {term!r} in MOOD by nomarr-pipeline ({tier or 'mood'} tier)",
        "all": [{"is": {"mood": term}}],
        "sort": "random",
        "limit": PLAYLIST_LIMIT,
    }


def export_navidrome_kit(
    calibrations: Sequence[Mapping[str, Any]],
    dest: Path,
    *,
    options: TagOptions,
    tiers: TierConfig,
    library_roots: Iterable[Path],
) -> NavidromeKit:
    """Write the kit into ``dest``; raises ``ValueError`` when ``dest`` is in a library folder."""
    real = dest.resolve()
    for root in library_roots:
        if real == root.resolve() or real.is_relative_to(root.resolve()):
            raise ValueError(f"{dest} is inside the library folder {root}: exports never go there")
    tags = float_tags(calibrations, options, tiers)
    toml = dest / TOML_NAME
    write_text_atomic(toml, toml_snippet(tags))
    folder = dest / PLAYLISTS
    written = []
    for term in mood_terms(calibrations, tiers):
        path = folder / f"{_slug(term) or 'mood'}.nsp"
        write_json_atomic(path, smart_playlist(term, options.mood_tier))
        written.append(path)
    for stale in set(folder.glob("*.nsp")) - set(written) if folder.is_dir() else ():
        stale.unlink()  # a term no model gives any more
    return NavidromeKit(toml, written, tags)
