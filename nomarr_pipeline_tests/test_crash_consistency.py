"""Crash consistency (issue 14): real ``nomarr-pipeline`` commands SIGKILLed, whole process
group, at random moments of the scan, the predictions (analysis), the calibration and the
recalibration; one complete re-run then leaves exactly the documents the same commands leave
uninterrupted (every collection, document by document). On PostgreSQL too, where the server
is also lost mid-run. A sample of ``scripts/crash_campaign.py``, which runs as many kills as
asked (docs/RELIABILITY.md)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nomarr_pipeline.cli.demo import build_demo_library
from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder, write_one_head_models
from nomarr_pipeline_tests.crash_runs import (
    STAGES,
    Documents,
    check,
    documents,
    kill_during,
    new_folder,
    server_lost_during,
)
from nomarr_pipeline_tests.postgres_server import PostgresServer
from nomarr_pipeline_tests.store_dump import differences

pytestmark = pytest.mark.slow

SEED = 14


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One demo library (every format; its noise is random, so it is built once and copied)
    and one head."""
    root = tmp_path_factory.mktemp("crash-inputs")
    return build_demo_library(root / "library"), write_one_head_models(root / "models")


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, inputs: tuple[Path, Path]) -> dict[str, Documents]:
    """What each command leaves when nothing is killed, one after the other from an empty store
    (SQLite; PostgreSQL holds the same documents, test_postgres_pipeline.py)."""
    folder = new_folder(tmp_path_factory.mktemp("crash-reference") / "folder", *inputs)
    found = {}
    for command in ("scan", "run", "force-recalibration", "write-tags"):
        check(folder.run(command))
        found[command] = documents(folder)
    return found


def _assert_converges(folder: PipelineFolder, command: str, expected: Documents, landed: list[str]) -> None:
    check(folder.run(command))
    problems = differences(expected, documents(folder))
    assert not problems, f"after kills {landed}, `{command}` left:\n" + "\n".join(problems)


def _kill_scan_analysis_calibration_recalibration(
    folder: PipelineFolder, expected: dict[str, Documents], lose_server: PostgresServer | None = None
) -> None:
    """From an empty store: a killed ``scan``, then ``scan``; a ``run`` killed in its predictions
    and one killed in its calibration (on PostgreSQL: one that loses its server for longer than
    the store's own retries), then ``run``; ``force-recalibration``, a ``write-tags`` killed in its
    recalibration, then ``write-tags``. After each re-run the store holds what the same
    commands leave uninterrupted."""
    rng = random.Random(SEED)
    landed = [kill_during(folder, STAGES["scan"], rng)]
    _assert_converges(folder, "scan", expected["scan"], landed)

    landed = [kill_during(folder, STAGES["analysis"], rng)]
    if lose_server is None:
        landed.append(kill_during(folder, STAGES["calibration"], rng))
    else:
        where, command = server_lost_during(folder, STAGES["analysis"], lose_server, rng, outage_s=15)
        landed.append(f"server lost {where}, run exited {command.returncode}")
        said = command.stdout + command.stderr
        # Longer than the store's retries: the shard steps' retry policy starts them again
        # (exit 0), or the run fails with an error line naming the database; never a traceback.
        assert "Traceback" not in said, said[-3000:]
        if command.returncode != 0:
            assert command.returncode in (1, 2), said[-3000:]
            named = "gave up after" in said or "cannot connect" in said
            assert "PostgreSQL" in said and named, said[-3000:]
    _assert_converges(folder, "run", expected["run"], landed)

    check(folder.run("force-recalibration"))
    landed = [kill_during(folder, STAGES["recalibration"], rng)]
    _assert_converges(folder, "write-tags", expected["write-tags"], landed)


def test_kills_in_every_stage_converge_on_sqlite(
    tmp_path: Path, inputs: tuple[Path, Path], expected: dict[str, Documents]
) -> None:
    _kill_scan_analysis_calibration_recalibration(new_folder(tmp_path / "killed", *inputs), expected)


def test_kills_and_a_lost_server_converge_on_postgres(
    tmp_path: Path,
    inputs: tuple[Path, Path],
    expected: dict[str, Documents],
    own_postgres_server: PostgresServer,
) -> None:
    url = own_postgres_server.url(own_postgres_server.create_database())
    folder = new_folder(tmp_path / "killed", *inputs, store_url=url, pg_password=own_postgres_server.password)
    _kill_scan_analysis_calibration_recalibration(folder, expected, lose_server=own_postgres_server)
