"""The ``file_tags`` asset and the ``head_discovery_sensor`` on a real Dagster instance."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from nomarr_pipeline.defs.assets.file_tags import build_file_tags
from nomarr_pipeline.defs.resources import ModelsResource, StoreResource
from nomarr_pipeline.defs.sensors import head_discovery_sensor
from nomarr_pipeline.ml.capacity import available_cores
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.fetch import fetch_models
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.model_server import ModelSite

HAPPY = "effnet-discogs-effnet-1:mood_happy"
DANCE = "effnet-discogs-effnet-1:danceability"
SAD = "musicnn-msd-musicnn-1:mood_sad"

# As the code location builds it by default: one shard step per core.
file_tags = build_file_tags(available_cores())


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    write_demo_models(tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'nomarr.db'}"
    store = open_store(url)
    root = tmp_path / "music"
    docs = []
    for seed, name in enumerate(["one.flac", "two.mp3", "tiny.wav"]):
        path = make_audio(root / name, 1.0 if name == "tiny.wav" else 4.0, seed=seed)
        stat = path.stat()
        docs.append({"_key": name, "library_id": "lib", "path": str(path),
                     "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    store.upsert_files(docs)
    store.close()
    return url


def _resources(store_url: str, models_dir: Path) -> dict[str, object]:
    return {"store": StoreResource(url=store_url),
            "models": ModelsResource(models_dir=str(models_dir), processes=2,
                                     file_timeout_s=60)}


def test_one_partition(instance: dg.DagsterInstance, store_url: str, models_dir: Path) -> None:
    instance.add_dynamic_partitions("heads", [HAPPY])
    result = dg.materialize([file_tags], partition_key=HAPPY, instance=instance,
                            resources=_resources(store_url, models_dir))
    assert result.success
    (materialization,) = result.asset_materializations_for_node("file_tags")
    assert materialization.partition == HAPPY
    metadata = materialization.metadata
    assert metadata["analysed"].value == 2
    assert metadata["failed"].value == 1
    assert "audio too short" in metadata["errors"].value[0]
    store = open_store(store_url)
    tags = store.file_tags_for_files(["one.flac", "two.mp3"])
    assert {t["head_name"] for t in tags} == {"mood_happy"} and len(tags) == 4


def test_many_partitions_in_one_run(
    instance: dg.DagsterInstance, store_url: str, models_dir: Path
) -> None:
    instance.add_dynamic_partitions("heads", [HAPPY, DANCE, SAD])
    result = dg.materialize(
        [file_tags], instance=instance, resources=_resources(store_url, models_dir),
        tags={ASSET_PARTITION_RANGE_START_TAG: HAPPY, ASSET_PARTITION_RANGE_END_TAG: SAD},
    )
    assert result.success
    materializations = result.asset_materializations_for_node("file_tags")
    assert {m.partition for m in materializations} == {HAPPY, DANCE, SAD}
    # Each partition's metadata is about its own head.
    assert {m.partition: m.metadata["analysed"].value for m in materializations} == {
        HAPPY: 2, DANCE: 2, SAD: 2}
    assert len(instance.get_runs()) == 1


def test_shards_in_one_process_store_what_one_shard_stores(
    instance: dg.DagsterInstance, store_url: str, models_dir: Path, tmp_path: Path
) -> None:
    # The same graph with 3 shard steps, in process: the keys of these files (not hex) all
    # fall into the last slice, which is still exactly one shard each.
    three = build_file_tags(3)
    assert {node.name for node in three.node_def.node_defs} == {  # type: ignore[union-attr]
        "analysis_shard_0_of_3", "analysis_shard_1_of_3", "analysis_shard_2_of_3", "file_tags_report"}
    instance.add_dynamic_partitions("heads", [HAPPY])
    resources = _resources(store_url, models_dir)
    resources["models"] = ModelsResource(models_dir=str(models_dir), processes=1, shards=3)
    result = dg.materialize([three], partition_key=HAPPY, instance=instance, resources=resources)
    (materialization,) = result.asset_materializations_for_node("file_tags")
    assert materialization.metadata["shards"].value == 3
    assert materialization.metadata["analysed"].value == 2
    assert materialization.metadata["failed"].value == 1

    # A run whose resource config names another count than the steps it has is refused.
    instance.add_dynamic_partitions("heads", [DANCE])
    resources["models"] = ModelsResource(models_dir=str(models_dir), processes=1, shards=2)
    with pytest.raises(dg.Failure, match=r"this run has 3 shard steps but models\.shards"):
        dg.materialize([three], partition_key=DANCE, instance=instance, resources=resources)


def test_partition_without_usable_model_fails_clearly(
    instance: dg.DagsterInstance, store_url: str, models_dir: Path
) -> None:
    (models_dir / "mood_happy-discogs-effnet-1.json").write_text("{broken")
    instance.add_dynamic_partitions("heads", [HAPPY])
    with pytest.raises(dg.Failure, match=r"1 selected heads have no usable model.*mood_happy"):
        dg.materialize([file_tags], partition_key=HAPPY, instance=instance,
                       resources=_resources(store_url, models_dir))


def test_no_models_folder_configured(instance: dg.DagsterInstance, store_url: str) -> None:
    instance.add_dynamic_partitions("heads", [HAPPY])
    with pytest.raises(dg.Failure, match=r"Models folder .* not found: set NOMARR_MODELS_DIR"):
        dg.materialize([file_tags], partition_key=HAPPY, instance=instance,
                       resources={"store": StoreResource(url=store_url),
                                  "models": ModelsResource()})


def _tick(instance: dg.DagsterInstance, models_dir: Path, cursor: str | None
          ) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"models": ModelsResource(models_dir=str(models_dir))},
    )
    result = head_discovery_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name,
                                                list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result, context.cursor


def test_sensor_adds_new_heads_as_one_run_and_removes_vanished(
    instance: dg.DagsterInstance, models_dir: Path
) -> None:
    instance.add_dynamic_partitions("heads", ["effnet-gone-1:old_head", HAPPY])
    result, cursor = _tick(instance, models_dir, None)
    assert isinstance(result, dg.SensorResult)
    keys = instance.get_dynamic_partitions("heads")
    assert "effnet-gone-1:old_head" not in keys
    assert len(keys) == 9  # seven classifier heads, two auto-tagging models
    (run,) = result.run_requests or []
    assert run.asset_selection == [file_tags.key]
    new = [k for k in keys if k != HAPPY]
    # exactly the new keys, which sit together at the end of the partition order
    assert keys[-len(new):] == new
    assert run.partition_key_range == dg.PartitionKeyRange(new[0], new[-1])
    # a dynamic range is resolved in partition order: start…end covers only the new keys
    assert keys[keys.index(new[0]): keys.index(new[-1]) + 1] == new

    # Nothing changed: skip, without even parsing JSON (the cursor remembers the keys).
    again, cursor = _tick(instance, models_dir, cursor)
    assert isinstance(again, dg.SkipReason)

    # A new head appears: only it is requested.
    extra = models_dir / "mood_party-discogs-effnet-1"
    shutil.copy(models_dir / "mood_happy-discogs-effnet-1.pb", extra.with_suffix(".pb"))
    data = json.loads((models_dir / "mood_happy-discogs-effnet-1.json").read_text())
    extra.with_suffix(".json").write_text(json.dumps(data))
    third, cursor = _tick(instance, models_dir, cursor)
    assert isinstance(third, dg.SensorResult)
    (run,) = third.run_requests or []
    party = "effnet-discogs-effnet-1:mood_party"
    assert run.partition_key_range == dg.PartitionKeyRange(party, party)

    # A head removed: its partition goes, no run.
    extra.with_suffix(".pb").unlink()
    extra.with_suffix(".json").unlink()
    fourth, _ = _tick(instance, models_dir, cursor)
    assert isinstance(fourth, dg.SensorResult)
    assert not fourth.run_requests
    assert party not in instance.get_dynamic_partitions("heads")


def test_sensor_reanalyses_when_a_model_file_is_replaced(
    instance: dg.DagsterInstance, models_dir: Path
) -> None:
    _, cursor = _tick(instance, models_dir, None)
    keys = instance.get_dynamic_partitions("heads")
    head = models_dir / "mood_happy-discogs-effnet-1.pb"
    # A new release of the same head: other bytes, still a valid graph (an unknown field 15).
    head.write_bytes(head.read_bytes() + b"\x78\x00")
    result, cursor = _tick(instance, models_dir, cursor)
    assert isinstance(result, dg.SensorResult)
    (run,) = result.run_requests or []
    assert run.partition_key_range == dg.PartitionKeyRange(keys[0], keys[-1])
    assert isinstance(_tick(instance, models_dir, cursor)[0], dg.SkipReason)


def test_sensor_picks_up_fetched_models(instance: dg.DagsterInstance, model_site: ModelSite,
                                       tmp_path: Path) -> None:
    models = tmp_path / "fetched"
    models.mkdir()
    empty, cursor = _tick(instance, models, None)
    assert isinstance(empty, dg.SkipReason)

    fetch_models(["mood_happy-discogs-effnet-1"], models, base_url=model_site.url)
    result, cursor = _tick(instance, models, cursor)
    added = [HAPPY, "effnet-discogs-effnet-bs64-1:discogs-effnet-bs64"]
    assert isinstance(result, dg.SensorResult)
    assert instance.get_dynamic_partitions("heads") == added
    (run,) = result.run_requests or []
    assert run.partition_key_range == dg.PartitionKeyRange(added[0], added[-1])

    fetch_models(["msd-musicnn-1"], models, base_url=model_site.url)
    result, cursor = _tick(instance, models, cursor)
    assert isinstance(result, dg.SensorResult)
    assert instance.get_dynamic_partitions("heads") == [*added, "musicnn-msd-musicnn-1:msd-musicnn"]


def test_sensor_skips_without_models_folder(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    context = dg.build_sensor_context(instance=instance,
                                      resources={"models": ModelsResource()})
    assert isinstance(head_discovery_sensor(context), dg.SkipReason)
    result, _ = _tick(instance, tmp_path / "missing", None)
    assert isinstance(result, dg.SkipReason)
