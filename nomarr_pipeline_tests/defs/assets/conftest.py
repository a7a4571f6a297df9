"""Fixtures of the sharded-run tests: two heads on two backbones, a persistent instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline_tests.defs.assets.sharded_runs import HEADS


@pytest.fixture
def two_head_models(tmp_path: Path) -> Path:
    dest = tmp_path / "models"
    # With their .onnx, as the demo writes them: the sharded runs analyse on ONNX Runtime.
    write_demo_models(dest, heads=("mood_happy-discogs-effnet-1", "mood_sad-msd-musicnn-1"), onnx=True)
    return dest


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("heads", list(HEADS))
        yield instance
