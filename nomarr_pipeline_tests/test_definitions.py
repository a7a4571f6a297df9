from __future__ import annotations

import dagster as dg

from nomarr_pipeline.definitions import defs


def test_definitions_load_with_the_designed_names() -> None:
    defs.resolve_all_job_defs()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "library_files" in keys
    assert defs.resolve_sensor_def("library_change_sensor") is not None
    assert isinstance(defs, dg.Definitions)
