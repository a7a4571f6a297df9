"""Resources hold configuration only; the store they open lives as long as one execution."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline.defs.resources import StoreResource
from nomarr_pipeline.defs.sensors import calibration_hash_sensor


def test_one_store_per_execution_closed_at_its_end(tmp_path: Path) -> None:
    with dg.build_resources({"store": StoreResource(url=f"sqlite:///{tmp_path / 's.sqlite3'}")}) as resources:
        store = resources.store.open()
        assert resources.store.open() is store  # one connection for the whole step
        connection = store._conn  # the engine's connection of this thread
        connection.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


def test_a_sensor_tick_closes_its_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    with dg.build_sensor_context(resources={"store": StoreResource(url=url)}) as context:
        assert isinstance(calibration_hash_sensor(context), dg.SkipReason)  # nothing analysed yet
        connection = context.resources.store.open()._conn
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


@pytest.mark.parametrize(
    ("url", "kind"),
    [("", "sqlite"), ("sqlite:////data/nomarr.sqlite3", "sqlite"), ("https://arango.example:8529", "arango")],
)
def test_kinds_badges_name_the_configured_engine(url: str, kind: str) -> None:
    code = (
        "import json; from nomarr_pipeline.definitions import defs; graph = defs.resolve_asset_graph()\n"
        "kinds = {k.to_user_string(): sorted(graph.get(k).kinds) for k in graph.get_all_asset_keys()}\n"
        "print(json.dumps(kinds))"
    )
    env = {"PATH": "/usr/bin:/bin", "NOMARR_STORE_URL": url}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    kinds = json.loads(out.stdout)
    for asset in ("library_files", "calibration_state", "calibrated_tags"):
        assert kind in kinds[asset], (asset, kinds[asset])
    others = {"sqlite", "arango", "postgres"} - {kind}
    assert not others & {k for asset_kinds in kinds.values() for k in asset_kinds}


def test_tag_options_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from nomarr_pipeline.defs.resources import TaggingResource, tagging_resource
    from nomarr_pipeline.settings import Settings

    assert tagging_resource(Settings.from_env()) == TaggingResource(previews_dir=tagging_resource(
        Settings.from_env()).previews_dir)  # the settings' defaults are the resource's
    default = tagging_resource(Settings.from_env()).tag_options()
    assert (default.mood_tier, default.genre, default.replace_fields, default.score_heads) == (
        "mood-regular", None, frozenset(), "mood"
    )  # fmt: skip  (MOOD on by default; GENRE off)
    for name, value in {"NOMARR_MOOD_TIER": "mood-loose", "NOMARR_REPLACE_MOOD": "yes",
                        "NOMARR_GENRE_HEAD": "discogs-effnet-bs64", "NOMARR_GENRE_FORM": "style",
                        "NOMARR_GENRE_COUNT": "5", "NOMARR_SCORE_HEADS": "none"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    options = tagging_resource(Settings.from_env()).tag_options()
    assert (options.mood_tier, options.score_heads) == ("mood-loose", "none")
    assert options.replace_fields == {"MOOD"}
    assert options.genre is not None
    assert (options.genre.head, options.genre.count) == ("discogs-effnet-bs64", 5)
    assert options.genre.value("Electronic---Techno") == "Techno"
    monkeypatch.setenv("NOMARR_STANDARD_MOOD", "false")
    assert tagging_resource(Settings.from_env()).tag_options().mood_tier is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("NOMARR_MOOD_TIER", "mood-medium"), ("NOMARR_GENRE_THRESHOLD", "1.5"), ("NOMARR_GENRE_COUNT", "three"),
     ("NOMARR_GENRE_FORM", "child"), ("NOMARR_STANDARD_MOOD", "maybe"), ("NOMARR_MAX_LABELS_PER_HEAD", "-1")],
)  # fmt: skip
def test_a_tag_setting_that_cannot_work_names_its_variable(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nomarr_pipeline.settings import SettingError, tag_settings

    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as raised:
        tag_settings()
    assert raised.value.variable == name and raised.value.next_step.startswith(f"set {name} to ")
