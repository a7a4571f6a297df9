"""``scan --verify``: read back the tags the writer put into every written file and queue
those whose tags differ from the store for writing again. A scan trusts a file whose size and
mtime are what the writer recorded, so tags another program stripped in place are found only
by reading the file back.
"""

from __future__ import annotations

from dataclasses import dataclass

from mutagen import MutagenError

from nomarr_pipeline.store.protocol import Doc, Store
from nomarr_pipeline.tagging.batch import file_path, predictions_by_file, wanted_tags
from nomarr_pipeline.tagging.formats import OpenedAudio
from nomarr_pipeline.tagging.selection import TagOptions
from nomarr_pipeline.tagging.standard import planned_tags


@dataclass
class VerifyReport:
    checked: int = 0  # written files read back
    queued: int = 0  # their tags differ from the store (or cannot be read): pending again


def verify_written_tags(
    store: Store, library: Doc, *, has_calibration: bool, options: TagOptions, batch_size: int = 500,
) -> VerifyReport:
    """Read back every written file of ``library`` that has no write pending; set
    ``file_tags_pending`` on those whose tags are not what the writer would write."""
    report = VerifyReport()
    if library.get("file_write_mode") == "none":
        return report
    for page in store.iter_documents("library_files", batch_size):
        written = [doc for doc in page if doc["library_id"] == library["_key"]
                   and doc.get("written_at") and not doc.get("file_tags_pending")]
        predictions = predictions_by_file(store, written)
        stale = []
        for doc in written:
            wanted = wanted_tags(doc, library, predictions[doc["_key"]], has_calibration=has_calibration,
                                 options=options)  # fmt: skip
            try:
                found = OpenedAudio(file_path(doc, library)).state()
                stale_file = found.tags() != planned_tags(found, wanted, options.replace_fields)
            except (OSError, MutagenError, ValueError):
                stale_file = True  # the writer will say what is wrong with it
            if stale_file:
                stale.append({"_key": doc["_key"], "file_tags_pending": True})
        report.checked += len(written)
        report.queued += len(stale)
        if stale:
            store.upsert_files(stale)
    return report
