"""Tag writing (docs/ARCHITECTURE.md §7): plain Python, no Dagster.

:mod:`.keys` (the ``nom:`` namespace), :mod:`.selection` (which tags a file gets),
:mod:`.formats` (the namespace in each container, with mutagen), :mod:`.atomic` (one file,
through a verified temp copy), :mod:`.temps` (whose a temp copy is; the sweep of dead
writers' ones), :mod:`.batch` (every pending file of a library, over the Store protocol).
"""
