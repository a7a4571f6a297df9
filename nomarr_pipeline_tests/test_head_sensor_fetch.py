"""Models fetched into the models folder are picked up like any others: the next
``head_discovery_sensor`` tick adds their partitions and requests their predictions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline.ml import fetch
from nomarr_pipeline.ml.fetch import fetch_models
from nomarr_pipeline.resources import ModelsResource
from nomarr_pipeline.sensors import head_discovery_sensor
from nomarr_pipeline_tests.ml.model_server import ModelSite, generated_models, publish, serve


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelSite]:
    monkeypatch.setattr(fetch, "RETRY_PAUSE_S", 0.01)
    published = ModelSite()
    publish(published, generated_models(tmp_path / "published"))
    with serve(published) as running:
        yield running


def _tick(instance: dg.DagsterInstance, models_dir: Path, cursor: str | None
          ) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"models": ModelsResource(models_dir=str(models_dir))},
    )
    result = head_discovery_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, context.cursor


def test_fetched_models_become_partitions_on_the_next_tick(site: ModelSite, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with dg.DagsterInstance.ephemeral() as instance:
        empty, cursor = _tick(instance, models, None)
        assert isinstance(empty, dg.SkipReason)

        fetch_models(["mood_happy-discogs-effnet-1"], models, base_url=site.url)
        result, cursor = _tick(instance, models, cursor)
        added = ["effnet-discogs-effnet-1:mood_happy", "effnet-discogs-effnet-bs64-1:discogs-effnet-bs64"]
        assert isinstance(result, dg.SensorResult)
        assert instance.get_dynamic_partitions("heads") == added
        (run,) = result.run_requests or []
        assert run.partition_key_range == dg.PartitionKeyRange(added[0], added[-1])

        fetch_models(["msd-musicnn-1"], models, base_url=site.url)
        result, cursor = _tick(instance, models, cursor)
        assert isinstance(result, dg.SensorResult)
        assert instance.get_dynamic_partitions("heads") == [*added, "musicnn-msd-musicnn-1:msd-musicnn"]
