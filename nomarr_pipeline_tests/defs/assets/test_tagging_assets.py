from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import mutagen
import numpy as np
import pytest
from mutagen.id3 import TIT2

from nomarr_pipeline.calibration.generation import calibrate_heads
from nomarr_pipeline.defs.assets.tagging import WriteTagsConfig, calibrated_tags, written_tags
from nomarr_pipeline.defs.jobs import tagging_job
from nomarr_pipeline.defs.resources import LibraryResource, StoreResource, TaggingResource
from nomarr_pipeline.defs.sensors import calibration_hash_sensor
from nomarr_pipeline.library.scanner import LibraryDefaults, scan_library
from nomarr_pipeline.ml.analysis import prediction_docs
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline.tagging.batch import PREVIEW_COLUMNS
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.store_dump import library_files
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is installed by scripts/test.sh"
)
HEADS = ("mood_happy-discogs-effnet-1", "danceability-discogs-effnet-1")


def _library(root: Path, files: int) -> None:
    for i in range(files):
        make_audio(root / f"{i:02d}.{('mp3', 'flac', 'm4a')[i % 3]}", seconds=1.0, seed=i)


def _analyse(store: Store, models: Path, seed: int) -> None:
    """Predictions as the inference would store them, with a known spread."""
    catalog = discover_models(models)
    rng = np.random.default_rng(seed)
    docs = []
    for file in library_files(store):
        for head in catalog.heads:
            first = float(rng.uniform(0, 1))
            docs += prediction_docs(file["_key"], head, [first, 1 - first], [0.01, 0.01])
        store.record_analysis([{"_key": file["_key"], "analyzed_at": 1, "analysis_error": None}])
    store.write_predictions(docs)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[dict[str, object], Store, Path, Path]:
    root = tmp_path / "music"
    _library(root, 12)
    models = tmp_path / "models"
    write_demo_models(models, heads=HEADS)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    store = open_store(url)
    scan_library(store, root, LibraryDefaults(auto_write_tags=True))
    _analyse(store, models, seed=1)
    calibrate_heads(store, discover_models(models).heads)
    resources = {
        "store": StoreResource(url=url),
        "library": LibraryResource(roots=[str(root)]),
        "tagging": TaggingResource(
            loose=0.3, regular=0.6, strict=0.9, previews_dir=str(tmp_path / "previews")
        ),
    }
    return resources, store, root, models


def test_recalibrate_then_write_tags_into_files(setup: tuple) -> None:
    resources, store, root, _ = setup
    result = dg.materialize([calibrated_tags, written_tags], resources=resources)
    assert result.success
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["calibrated_tags"]["files_recalibrated"].value == 12
    assert meta["calibrated_tags"]["remaining"].value == 0
    assert meta["written_tags"]["written"].value == 12 and meta["written_tags"]["failed"].value == 0
    tagged = read_nom_tags(root / "00.mp3")
    assert any(key.startswith("nom:cal:effnet-discogs-effnet-1:mood_happy:") for key in tagged)
    assert "nom:mood-loose" in tagged and "nom:version" in tagged
    assert store.file_counts()["pending_writes"] == 0

    again = dg.materialize([calibrated_tags, written_tags], resources=resources)
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in again.get_asset_materialization_events()
    }
    assert meta["calibrated_tags"]["files_recalibrated"].value == 0
    assert meta["written_tags"]["written"].value == 0


def _written_tags_metadata(resources: dict[str, object]) -> dict[str, dg.MetadataValue]:
    result = dg.materialize([calibrated_tags, written_tags], resources=resources)
    assert result.success
    return result.get_asset_materialization_events()[-1].materialization.metadata


def test_a_file_edited_in_place_by_another_program_is_rescanned_and_written_after_new_analysis(
    setup: tuple,
) -> None:
    resources, store, root, models = setup
    edited = root / "00.mp3"
    (doc,) = [d for d in library_files(store) if d["path"] == str(edited.resolve())]
    folder_mtime = root.stat().st_mtime_ns
    audio = mutagen.File(edited)
    audio.tags.add(TIT2(encoding=3, text=["Retitled by another tagger"]))
    audio.save()  # in place: the folder's mtime does not move, so no folder scan sees it
    os.utime(root, ns=(folder_mtime, folder_mtime))

    meta = _written_tags_metadata(resources)

    assert (meta["written"].value, meta["skipped"].value, meta["rescanned"].value) == (11, 1, 1)
    (now,) = store.get_files([doc["_key"]])
    assert (now["size"], now["mtime_ns"]) == (edited.stat().st_size, edited.stat().st_mtime_ns)
    assert now["analyzed_at"] is None and store.file_tags_for_files([doc["_key"]]) == []
    assert now["write_error"] is None and now["file_tags_pending"] is False
    assert scan_library(store, root).changed == 0, "recorded: not stuck until a full scan"

    _analyse(store, models, seed=3)  # the next predictions run analyses it again
    calibrate_heads(store, discover_models(models).heads)
    meta = _written_tags_metadata(resources)
    assert meta["failed"].value == 0 and meta["skipped"].value == 0
    assert "nom:mood-loose" in read_nom_tags(edited)
    assert str(mutagen.File(edited).tags["TIT2"]) == "Retitled by another tagger"
    assert store.file_counts()["pending_writes"] == 0


def test_preview_lists_changes_without_touching_files(setup: tuple) -> None:
    resources, _, root, _ = setup
    before = (root / "01.flac").read_bytes()
    result = dg.materialize(
        [calibrated_tags, written_tags],
        resources=resources,
        run_config=dg.RunConfig(ops={"written_tags": WriteTagsConfig(preview=True)}),
    )
    meta = result.get_asset_materialization_events()[-1].materialization.metadata
    assert meta["dry_run"].value is True and meta["preview_rows"].value > 0
    preview = meta["preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    assert [column.name for column in preview.schema.columns] == list(PREVIEW_COLUMNS)
    assert "nom:mood-loose" in {record.data["key"] for record in preview.records}
    csv = Path(meta["preview_csv"].value)
    assert csv.parent == root.parent / "previews" and csv.read_text().startswith("file_id,")
    assert (root / "01.flac").read_bytes() == before


def _tick(instance: dg.DagsterInstance, resources: dict[str, object]) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return calibration_hash_sensor(context)


def test_calibration_hash_sensor_requests_once_and_again_on_new_mismatches(setup: tuple) -> None:
    resources, store, root, models = setup
    definitions = dg.Definitions(
        assets=[calibrated_tags, written_tags], jobs=[tagging_job], resources=resources
    )
    job = definitions.resolve_job_def("tagging_job")
    with dg.instance_for_test() as instance:
        first = _tick(instance, resources)
        assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
        request = first.run_requests[0]
        assert request.tags["nomarr/mismatched_files"] == "12"
        # The same tick again asks for the same run key, which Dagster starts only once.
        assert _tick(instance, resources).run_requests[0].run_key == request.run_key

        assert job.execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags
        ).success
        assert read_nom_tags(root / "02.m4a")  # auto_write_tags library: written without a click
        done = _tick(instance, resources)
        assert isinstance(done, dg.SkipReason) and "expected calibration hash" in done.skip_message

        # Newly analysed predictions clear their files' hashes: the sensor asks again.
        _analyse(store, models, seed=2)
        again = _tick(instance, resources)
        assert isinstance(again, dg.SensorResult) and again.run_requests[0].run_key != request.run_key


def test_calibration_hash_sensor_waits_while_a_run_is_in_flight_or_failed(setup: tuple) -> None:
    resources, *_ = setup
    definitions = dg.Definitions(
        assets=[calibrated_tags, written_tags], jobs=[tagging_job], resources=resources
    )
    job = definitions.resolve_job_def("tagging_job")
    with dg.instance_for_test() as instance:
        request = _tick(instance, resources).run_requests[0]
        run = instance.create_run_for_job(job, tags=request.tags, status=dg.DagsterRunStatus.STARTED)
        busy = _tick(instance, resources)
        assert isinstance(busy, dg.SkipReason) and "in flight" in busy.skip_message
        instance.report_run_failed(run)
        failed = _tick(instance, resources)
        assert isinstance(failed, dg.SkipReason) and "failed on these 12 files" in failed.skip_message
