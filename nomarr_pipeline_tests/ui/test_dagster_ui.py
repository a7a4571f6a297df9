"""The Dagster UI as a user meets it: ``dagster dev`` from the repo root, the code location,
the asset graph, partitions, automation, a run launched through GraphQL, and the lineage
page rendered by a real headless Chromium.

One webserver serves the whole module (start-up dominates the cost).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.design_names import ASSETS, HEAD_PARTITIONED, SCHEDULES, SENSORS
from nomarr_pipeline_tests.ml.audio_fixtures import write_wav
from nomarr_pipeline_tests.ui.dagster_dev import (
    ASSET_GRAPH_QUERY,
    AUTOMATION_QUERY,
    LAUNCH_RUN_MUTATION,
    LOCATION_NAME,
    LOCATION_STATUS_QUERY,
    REPO_ROOT,
    REPOSITORY_NAME,
    RUN_STATUS_QUERY,
    SET_NUX_SEEN_MUTATION,
    DagsterDev,
)

pytestmark = pytest.mark.slow

# The names of docs/ARCHITECTURE.md §9. Extend the REQUIRED_* sets as pieces land; the
# DESIGNED_* sets bound what may exist at all.
DESIGNED_ASSETS = frozenset(ASSETS)
REQUIRED_ASSETS = DESIGNED_ASSETS
# (upstream, downstream): checked whenever the downstream asset is defined in code (a
# not-yet-defined asset shows up only as a stub without its own dependencies).
DESIGNED_LINEAGE = frozenset(
    {
        ("library_files", "file_tags"),
        ("file_tags", "calibration_state"),
        ("calibration_state", "calibration_history"),
        ("calibration_state", "calibration_sidecars"),
        ("calibration_state", "calibration_package"),
        ("calibration_state", "calibrated_tags"),
        ("calibrated_tags", "written_tags"),
    }
)
HEAD_PARTITIONED_ASSETS = frozenset(HEAD_PARTITIONED)
DESIGNED_SENSORS = frozenset(SENSORS)
REQUIRED_SENSORS = DESIGNED_SENSORS
DESIGNED_SCHEDULES = frozenset(SCHEDULES)
REQUIRED_SCHEDULES = DESIGNED_SCHEDULES

RUN_TIMEOUT_S = 120.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
]
SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "asset-graph.png"


@pytest.fixture(scope="module")
def dagster_dev() -> Iterator[DagsterDev]:
    # Not tmp_path: a module-scoped fixture outlives any one test's temp folder.
    with tempfile.TemporaryDirectory(prefix="nomarr-ui-") as tmp:
        server = DagsterDev(home=Path(tmp) / "dagster_home", data_dir=Path(tmp) / "nomarr-data")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def asset_nodes(dagster_dev: DagsterDev) -> dict[str, dict]:
    nodes = dagster_dev.graphql(ASSET_GRAPH_QUERY)["assetNodes"]
    return {"/".join(node["assetKey"]["path"]): node for node in nodes}


def test_code_location_loads(dagster_dev: DagsterDev) -> None:
    workspace = dagster_dev.graphql(LOCATION_STATUS_QUERY)["workspaceOrError"]
    assert workspace["__typename"] == "Workspace"
    (entry,) = workspace["locationEntries"]
    assert entry["name"] == LOCATION_NAME
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry["locationOrLoadError"]


def test_asset_graph_has_the_designed_assets_and_lineage(asset_nodes: dict[str, dict]) -> None:
    names = set(asset_nodes)
    assert names >= REQUIRED_ASSETS, f"missing assets: {sorted(REQUIRED_ASSETS - names)}"
    assert names <= DESIGNED_ASSETS, f"assets outside the design: {sorted(names - DESIGNED_ASSETS)}"
    assert asset_nodes["library_files"]["isMaterializable"]
    for upstream, downstream in sorted(DESIGNED_LINEAGE):
        node = asset_nodes.get(downstream)
        if node is None or not node["isMaterializable"]:
            continue
        deps = {"/".join(dep["path"]) for dep in node["dependencyKeys"]}
        assert upstream in deps, f"{downstream} should depend on {upstream}; it depends on {sorted(deps)}"


def test_head_assets_are_partitioned_by_the_dynamic_heads_partitions(asset_nodes: dict[str, dict]) -> None:
    checked = 0
    for name in sorted(HEAD_PARTITIONED_ASSETS):
        node = asset_nodes.get(name)
        if node is None or not node["isMaterializable"]:
            continue
        assert node["partitionDefinition"] == {"type": "DYNAMIC", "name": "heads"}, name
        checked += 1
    assert checked, "no head-partitioned asset is defined yet"
    assert asset_nodes["library_files"]["partitionDefinition"] is None


def test_sensors_and_schedules_exist(dagster_dev: DagsterDev) -> None:
    repositories = dagster_dev.graphql(AUTOMATION_QUERY)["repositoriesOrError"]
    assert repositories["__typename"] == "RepositoryConnection", repositories
    (repository,) = repositories["nodes"]
    sensors = {sensor["name"] for sensor in repository["sensors"]}
    schedules = {schedule["name"] for schedule in repository["schedules"]}
    assert REQUIRED_SENSORS <= sensors <= DESIGNED_SENSORS, sensors
    assert REQUIRED_SCHEDULES <= schedules <= DESIGNED_SCHEDULES, schedules
    assert "library_scan_job" in {job["name"] for job in repository["jobs"]}


def test_launch_a_scan_run_through_graphql(dagster_dev: DagsterDev, tmp_path: Path) -> None:
    library = tmp_path / "music"
    write_wav(library / "a.wav")
    write_wav(library / "Album" / "b.wav", freq=660.0)
    params = {
        "selector": {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": REPOSITORY_NAME,
            "jobName": "library_scan_job",
        },
        # The library folder comes in as resource config, exactly as a UI user would set it
        # in the launchpad; the store is the webserver's own NOMARR_DATA_DIR.
        "runConfigData": {"resources": {"library": {"config": {"roots": [str(library)]}}}},
    }
    launched = dagster_dev.graphql(LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = launched["run"]["status"]
    while status not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
        time.sleep(0.5)
        result = dagster_dev.graphql(RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
        assert result["__typename"] == "Run", result
        status = result["status"]
    assert status == "SUCCESS", f"run {run_id} ended as {status}:\n{dagster_dev.log_tail()}"

    store = open_store(f"sqlite:///{dagster_dev.data_dir / 'nomarr.sqlite3'}")
    try:
        assert store.file_counts()["total"] == 2
    finally:
        store.close()


def _visible_text(dom: str) -> str:
    without_code = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", without_code).split())


def shown_in_graph(name: str, text: str) -> bool:
    """The graph shortens long names in the middle ("calibrati…_history")."""
    if re.search(rf"(?<![\w…]){re.escape(name)}(?![\w…])", text):
        return True
    for head, tail in re.findall(r"([\w]+)…([\w]+)", text):
        if name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name):
            return True
    return False


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_lineage_page_shows_the_assets_in_chromium(
    dagster_dev: DagsterDev, asset_nodes: dict[str, dict], tmp_path: Path
) -> None:
    dagster_dev.graphql(SET_NUX_SEEN_MUTATION)
    groups = sorted({node["groupName"] for node in asset_nodes.values() if node["groupName"]})
    # Groups open (the UI's own query parameter), so every asset box is drawn.
    url = f"{dagster_dev.url}/asset-groups?expanded=" + ",".join(f"global@global:{g}" for g in groups)
    # Stubs (assets only referenced, not defined yet) are hidden from the graph by default.
    wanted = sorted(name for name, node in asset_nodes.items() if node["isMaterializable"])

    missing: list[str] = wanted
    text = ""
    # The page is a JS app that fetches the graph after load: give it virtual time, and try
    # again (bounded) if the first render was not complete yet.
    for budget_ms in (15000, 30000):
        dump = _chromium(url, tmp_path / "profile", f"--virtual-time-budget={budget_ms}", "--dump-dom")
        text = _visible_text(dump.stdout)
        missing = [name for name in wanted if not shown_in_graph(name, text)]
        if not missing:
            break
    assert not missing, f"asset names not on the lineage page: {missing}\npage text: {text[:2000]}"

    shot = tmp_path / "asset-graph.png"
    _chromium(url, tmp_path / "profile", "--virtual-time-budget=15000", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or blank"
    if os.environ.get("NOMARR_UPDATE_SCREENSHOT"):  # refresh the README's picture on request only
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
