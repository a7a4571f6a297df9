from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np

from nomarr_pipeline.defs.assets.calibration import (
    calibration_history,
    calibration_package,
    calibration_sidecars,
    calibration_state,
)
from nomarr_pipeline.defs.resources import CalibrationResource, ModelsResource, StoreResource
from nomarr_pipeline.ml.analysis import prediction_docs
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.store import open_store

HEADS = ("mood_happy-discogs-effnet-1", "danceability-discogs-effnet-1")


def _range_tags(keys: list[str]) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def _setup(tmp_path: Path, files: int) -> tuple[dict[str, object], list[str]]:
    models = tmp_path / "models"
    write_demo_models(models, heads=HEADS)
    catalog = discover_models(models)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    store = open_store(url)
    rng = np.random.default_rng(7)
    store.upsert_files(
        [{"_key": f"f{i:04d}", "library_id": "lib", "path": f"/m/{i}.mp3"} for i in range(files)]
    )
    docs = []
    for head in catalog.heads:
        for i in range(files):
            first = float(rng.beta(2, 5))
            values = [first, 1.0 - first][: len(head.labels)]
            docs += prediction_docs(f"f{i:04d}", head, values, [0.01] * len(values))
    store.write_predictions(docs)
    resources = {
        "store": StoreResource(url=url),
        "models": ModelsResource(models_dir=str(models)),
        "calibration": CalibrationResource(export_dir=str(tmp_path / "exports"), min_n=100),
    }
    return resources, list(catalog.partition_keys)


def test_calibration_assets_one_run_for_all_heads(tmp_path: Path) -> None:
    resources, keys = _setup(tmp_path, files=150)
    assets = [calibration_state, calibration_history, calibration_sidecars]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("heads", keys)
        result = dg.materialize(assets, resources=resources, instance=instance, tags=_range_tags(keys))
        assert result.success
        package = dg.materialize(
            [calibration_package, *assets],
            selection=[calibration_package],
            resources=resources,
            instance=instance,
        )
        assert package.success

        state_events = [
            e for e in result.get_asset_materialization_events() if e.asset_key == calibration_state.key
        ]
        assert sorted(e.partition for e in state_events) == sorted(keys)
        happy = next(e for e in state_events if e.partition.endswith(":mood_happy"))
        meta = happy.materialization.metadata
        assert "data:image/png;base64," in meta["histogram"].value  # one image for the head
        assert not [key for key in meta if "/" in key]  # no entry (and no plot) per label
        labels = {record.data["label"]: record.data for record in meta["labels"].records}
        assert set(labels) == {"happy", "non_happy"}
        assert 0.0 <= labels["happy"]["p5"] < labels["happy"]["p95"] <= 1.0 and labels["happy"]["n"] == 150
        assert labels["happy"]["p5_delta"] is None  # the first computation
        history = next(
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == calibration_history.key and e.partition == happy.partition
        )
        (snapshot,) = [r.data for r in history["snapshots"].records if r.data["label"] == "happy"]
        assert snapshot["p5"] == labels["happy"]["p5"] and snapshot["snapshots (last 5)"] == 1
        assert [c.name for c in history["snapshots"].schema.columns][:2] == ["label", "snapshots (last 5)"]

        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["p5_below_p95"].passed and checks["minimum_n"].passed

        exports = tmp_path / "exports"
        sidecar = json.loads((exports / keys[0].split(":")[0] / "mood_happy-calibration-v1.json").read_text())
        assert sidecar["head"] == "mood_happy"
        package_doc = json.loads((exports / "calibrations.json").read_text())
        assert len(package_doc["calibrations"]) == 4  # two heads, two labels each
        pmeta = package.get_asset_materialization_events()[0].materialization.metadata
        assert (pmeta["total_heads"].value, pmeta["calibrated_heads"].value) == (2, 2)


def test_too_few_values_warns(tmp_path: Path) -> None:
    resources, keys = _setup(tmp_path, files=20)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("heads", keys)
        result = dg.materialize(
            [calibration_state], resources=resources, instance=instance, partition_key=keys[0]
        )
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert not checks["minimum_n"].passed
        assert checks["minimum_n"].severity == dg.AssetCheckSeverity.WARN
        # One run serves many heads: the result names the head that failed, and the fix.
        said = checks["minimum_n"].description
        assert said.split(" labels of ")[1].startswith(f"{keys[0]}; analyse more")


def test_nightly_schedule_runs_the_calibration_job_over_all_heads(tmp_path: Path) -> None:
    from nomarr_pipeline.defs.jobs import calibration_job
    from nomarr_pipeline.defs.schedules import nightly_calibration_schedule

    resources, keys = _setup(tmp_path, files=120)
    assets = [calibration_state, calibration_history, calibration_sidecars, calibration_package]
    definitions = dg.Definitions(assets=assets, jobs=[calibration_job], resources=resources)
    schedule = nightly_calibration_schedule("0 3 * * *", "UTC")
    with dg.instance_for_test() as instance:
        empty = schedule(dg.build_schedule_context(instance=instance))
        assert isinstance(empty, dg.SkipReason)
        instance.add_dynamic_partitions("heads", keys)
        request = schedule(dg.build_schedule_context(instance=instance))
        assert (
            isinstance(request, dg.RunRequest)
            and request.tags["dagster/asset_partition_range_end"] == keys[-1]
        )
        job = definitions.resolve_job_def("calibration_job")
        result = job.execute_in_process(instance=instance, tags=request.tags)
        assert result.success
        materialized = {
            (e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()
        }
        assert {("calibration_sidecars", key) for key in keys} <= materialized
        assert ("calibration_package", None) in materialized


def test_histogram_range_override_from_config(tmp_path: Path) -> None:
    resources, keys = _setup(tmp_path, files=120)
    happy = next(key for key in keys if key.endswith(":mood_happy"))
    resources["calibration"] = CalibrationResource(
        export_dir=str(tmp_path / "exports"),
        histogram_overrides={"mood_happy": {"lo": -0.5, "hi": 1.5, "bins": 2000}},
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("heads", keys)
        assert dg.materialize(
            [calibration_state], resources=resources, instance=instance, tags=_range_tags(keys)
        ).success
    store = open_store(resources["store"].url)
    states = {s["_key"]: s for s in store.list_calibrations()}
    assert states[f"{happy}:happy"]["histogram"] == {"lo": -0.5, "hi": 1.5, "bins": 2000, "bin_width": 0.001}
    other = next(s for k, s in states.items() if ":danceability:" in k)
    assert other["histogram"]["bins"] == 10_000
