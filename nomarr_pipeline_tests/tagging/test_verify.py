"""``scan --verify``'s check (issue 25, item 5): tags stripped or edited in place, keeping the
file's size and mtime, are found by reading the file back and queued for writing again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from nomarr_pipeline.store import Store
from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.selection import DEFAULT_OPTIONS
from nomarr_pipeline.tagging.verify import VerifyReport, verify_written_tags
from nomarr_pipeline_tests.tagging.audio_helpers import write_nom_tags
from nomarr_pipeline_tests.tagging.library_helpers import LIB, file_doc, library_doc, register, run
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags


def _verify(store: Store) -> VerifyReport:
    library = store.get_library(LIB)
    assert library is not None
    return verify_written_tags(store, library, has_calibration=True, options=DEFAULT_OPTIONS, batch_size=2)


def test_tags_changed_in_place_are_queued_and_written_again(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {"a": make_file("mp3"), "b": make_file("flac"), "c": make_file("m4a")}
    register(store, files)
    assert run(store, library_root).written == 3
    written = {key: read_nom_tags(path) for key, path in files.items()}
    assert _verify(store) == VerifyReport(checked=3, queued=0)

    # Another program strips one file's tags and edits another's, leaving size aside and
    # putting the mtime back: a scan sees nothing.
    for key, tags in (("a", {}), ("c", {**written["c"], keys.MOOD_REGULAR: ["sad"]})):
        stat = files[key].stat()
        write_nom_tags(files[key], tags)
        os.utime(files[key], ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert _verify(store) == VerifyReport(checked=3, queued=2)
    assert [file_doc(store, key)["file_tags_pending"] for key in "abc"] == [True, False, True]
    assert _verify(store) == VerifyReport(checked=1, queued=0)  # pending files wait for the writer

    assert run(store, library_root).written == 2
    assert {key: read_nom_tags(path) for key, path in files.items()} == written
    assert _verify(store) == VerifyReport(checked=3, queued=0)


def test_a_file_that_cannot_be_read_back_is_queued(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {"a": make_file("flac")}
    register(store, files)
    run(store, library_root)
    files["a"].write_bytes(b"not audio any more")
    assert _verify(store) == VerifyReport(checked=1, queued=1)
