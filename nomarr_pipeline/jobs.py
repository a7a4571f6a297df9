"""Jobs the sensors and schedules launch."""

from __future__ import annotations

import dagster as dg

library_scan_job = dg.define_asset_job(
    "library_scan_job",
    selection=dg.AssetSelection.assets("library_files"),
    description="Scan the library folders into library_files.",
)
