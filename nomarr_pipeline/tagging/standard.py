"""What the standard MOOD and GENRE fields become when the pipeline writes a file.

A field may hold the user's own values beside the pipeline's. The pipeline's are remembered in
the file under the field's ``nom:written-*`` key (no store needed, and the record moves with the
file): only those are replaced. MOOD gets the user's values, then the pipeline's; GENRE gets the
pipeline's only while the user has none of their own (docs/ARCHITECTURE.md, tags in files). A
field listed in ``replace`` is the pipeline's alone whenever it has values for it.
"""

from __future__ import annotations

from collections.abc import Collection

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import FileTagState, NomTags


def planned_tags(before: FileTagState, wanted: NomTags, replace: Collection[str] = ()) -> NomTags:
    """The ``nom:`` keys and standard fields the file should carry: ``wanted``'s ``nom:`` keys,
    and each standard field merged from ``before`` and ``wanted``'s values for it (none: the
    pipeline's earlier values leave the field)."""
    planned = {key: values for key, values in wanted.items() if keys.is_nom_key(key)}
    for field, written_key in keys.WRITTEN_KEYS.items():
        ours = wanted.get(field, [])
        owned_before = before.nom_tags.get(written_key, [])
        users = (
            []
            if field in replace and ours
            else [value for value in before.standard.get(field, []) if value not in owned_before]
        )
        if field == keys.GENRE and users:
            ours = []  # never over the user's own genres
        ours = [value for value in dict.fromkeys(ours) if value not in users]
        if ours:
            planned[written_key] = ours
        if users or ours:
            planned[field] = users + ours
    return planned
