"""``library_files``: the scan of every configured library root."""

import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from nomarr_pipeline.defs.resources import LibraryResource, StoreResource
from nomarr_pipeline.library.scanner import LibraryDefaults, scan_library


class LibraryScanConfig(dg.Config):
    full_scan: bool = False
    """Stat every file, not only those in folders whose mtime changed: catches tag edits made
    in place by other programs, which do not change their folder's mtime."""


def _progress_log(context: dg.AssetExecutionContext, root: Path) -> Callable[[int, int], None]:
    """Logs a scan's progress at most every 10 s (a first scan of a large library takes a while)."""
    last = [time.monotonic()]

    def log(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= 10 or done == total:
            last[0] = time.monotonic()
            context.log.info(f"{root}: {done}/{total} files looked at")

    return log


@dg.asset(group_name="library", kinds={"python"})
def library_files(
    context: dg.AssetExecutionContext,
    config: LibraryScanConfig,
    store: StoreResource,
    library: LibraryResource,
) -> dg.MaterializeResult:
    """Audio files of the library roots: new, changed and removed files, errors per file."""
    roots = library.root_paths()
    if not roots:
        raise dg.Failure(
            "No library folders configured: set NOMARR_LIBRARY_ROOTS (folders separated by ':') "
            "or the `roots` of the `library` resource."
        )
    defaults = LibraryDefaults(
        file_write_mode=library.write_mode(),
        auto_write_tags=library.auto_write_tags,
        write_raw_scores=library.write_raw_scores,
    )
    db = store.open()
    totals = {"total": 0, "new": 0, "changed": 0, "removed": 0, "unchanged": 0, "errors": 0}
    per_library = []
    for root in roots:
        report = scan_library(
            db, root, defaults, full=config.full_scan, progress=_progress_log(context, root)
        )
        context.log.info(
            f"{root}: {report.total} files ({report.new} new, {report.changed} changed, "
            f"{report.removed} removed, {report.errors} errors) in {report.seconds:.1f}s"
        )
        for field in totals:
            totals[field] += getattr(report, field)
        per_library.append(report.as_dict())
    return dg.MaterializeResult(
        metadata={
            **{name: dg.MetadataValue.int(value) for name, value in totals.items()},
            "libraries": dg.MetadataValue.json(per_library),
            "store": dg.MetadataValue.text(store.describe()),
        }
    )
