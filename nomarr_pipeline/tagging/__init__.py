"""Tag writing (DESIGN.md §6, seed 004): plain Python, no Dagster.

- :mod:`~nomarr_pipeline.tagging.keys` — the ``nom:`` namespace: key names, score keys, number format;
- :mod:`~nomarr_pipeline.tagging.selection` — which tags a file gets per write mode and calibration;
- :mod:`~nomarr_pipeline.tagging.formats` — reading/writing the namespace per container with mutagen;
- :mod:`~nomarr_pipeline.tagging.atomic` — one file, written through a verified temp copy;
- :mod:`~nomarr_pipeline.tagging.temps` — whose a temp copy is, and the sweep of dead writers' ones;
- :mod:`~nomarr_pipeline.tagging.batch` — every pending file of a library, over the Store protocol.
"""
