"""A file's ``nom:`` keys, and the key of one score, as tests name them."""

from __future__ import annotations

import os
from collections.abc import Iterable

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import NomTags, OpenedAudio


def read_nom_tags(path: str | os.PathLike[str]) -> NomTags:
    """Every ``nom:`` key in the file with its values, as stored."""
    return OpenedAudio(path).state().nom_tags


def score_key(
    kind: keys.ScoreKind, model_key: str, head_name: str, label: str, head_labels: Iterable[str] = ()
) -> str:
    """The key of ``label`` among ``head_labels``, the head's other labels (they decide whether
    ``label`` has a twin differing only in case)."""
    return keys.score_keys(kind, model_key, head_name, tuple(sorted({label, *head_labels})))[label]
