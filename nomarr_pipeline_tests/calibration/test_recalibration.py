from __future__ import annotations

import os

import numpy as np
import pytest

from nomarr_pipeline.calibration.generation import calibrate_heads
from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.recalibration import RecalibrationStalledError, recalibrate
from nomarr_pipeline.calibration.tiers import TIER_NAMES, TierConfig
from nomarr_pipeline.store import Store
from nomarr_pipeline_tests.calibration.conftest import populate
from nomarr_pipeline_tests.calibration.heads import HeadRef
from nomarr_pipeline_tests.calibration.reference import calibrate
from nomarr_pipeline_tests.calibration.tier_docs import compute_mood_tiers

EFFNET = "effnet-discogs-effnet-1"
NOW = 1_768_564_800_000
FILES = 23
RNG = np.random.default_rng(11)
HAPPY = RNG.uniform(0.0, 1.0, FILES).round(6).tolist()
DANCE = RNG.beta(2, 2, FILES).round(6).tolist()
HEADS = [
    HeadRef(EFFNET, "mood_happy", 1, ("happy", "non_happy")),
    HeadRef(EFFNET, "danceability", 1, ("danceable", "not_danceable")),
]


def fill(store: Store, library_id: str = "lib1") -> list[str]:
    return populate(
        store,
        {
            (EFFNET, "mood_happy"): {"happy": HAPPY, "non_happy": [1 - v for v in HAPPY]},
            (EFFNET, "danceability"): {"danceable": DANCE, "not_danceable": [1 - v for v in DANCE]},
        },
        library_id=library_id,
    )


def check_file_is_recalibrated(store: Store, file_id: str, expected_hash: str) -> None:
    (doc,) = store.get_files([file_id])
    assert doc["calibration_hash"] == expected_hash
    assert doc["file_tags_pending"] is True
    states = {s["_key"]: s for s in store.list_calibrations()}
    tags = store.file_tags_for_files([file_id])
    for tag in tags:
        state = states.get(f"{tag['model_key']}:{tag['head_name']}:{tag['label']}")
        reference = calibrate(tag["value"], state and state["p5"], state and state["p95"])
        if reference is None:
            assert tag["calibrated_value"] is None
        else:
            assert tag["calibrated_value"] == pytest.approx(reference, abs=1e-12)
    assert doc["mood_tiers"] == compute_mood_tiers(tags)


def test_recalibrates_every_file_in_batches(sqlite_store: Store) -> None:
    keys = fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    seen: list[tuple[int, int]] = []
    report = recalibrate(sqlite_store, batch_size=5, progress=lambda done, batch: seen.append((done, batch)))
    expected = expected_calibration_hash(sqlite_store.list_calibrations())
    assert (report.recalibrated, report.batches, report.remaining) == (FILES, 5, 0)
    assert report.expected_hash == expected and report.remaining == 0
    assert seen == [(5, 5), (10, 5), (15, 5), (20, 5), (23, 3)]
    for key in keys:
        check_file_is_recalibrated(sqlite_store, key, expected)
    assert any(sqlite_store.get_files([k])[0]["mood_tiers"]["mood-loose"] for k in keys)
    # Nothing left to do on a rerun.
    assert recalibrate(sqlite_store).recalibrated == 0


def test_resumes_after_a_crash(sqlite_store: Store) -> None:
    keys = fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)

    class CrashingStore:
        def __init__(self, inner: Store) -> None:
            self.inner, self.finished = inner, 0

        def finish_claimed_recalibration(self, claim, expected_hash, mood_tiers):
            if self.finished == 2:
                # Dies inside the third batch's transaction, after its values were applied.
                unstorable = {key: {"mood-loose": object()} for key in mood_tiers}
                self.inner.finish_claimed_recalibration(claim, expected_hash, unstorable)
            self.finished += 1
            return self.inner.finish_claimed_recalibration(claim, expected_hash, mood_tiers)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(TypeError):
        recalibrate(CrashingStore(sqlite_store), batch_size=4)  # type: ignore[arg-type]
    expected = expected_calibration_hash(sqlite_store.list_calibrations())
    # Two batches finished; the third rolled back and the fourth was only claimed.
    assert sqlite_store.count_files_needing_recalibration(expected) == FILES - 8
    report = recalibrate(sqlite_store, batch_size=4)
    assert report.recalibrated == FILES - 8 and report.remaining == 0
    for key in keys:
        check_file_is_recalibrated(sqlite_store, key, expected)


def test_new_calibration_triggers_full_recalibration_small_drift_does_not(sqlite_store: Store) -> None:
    fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    recalibrate(sqlite_store)
    # Recomputing unchanged data: the hash is stable, nothing is rewritten.
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW + 1)
    assert recalibrate(sqlite_store).recalibrated == 0
    # A new head version changes the calibration in force: every file is redone.
    bumped = [HeadRef(EFFNET, "mood_happy", 2, ("happy", "non_happy"))]
    calibrate_heads(sqlite_store, bumped, now_ms=NOW + 2)
    assert recalibrate(sqlite_store).recalibrated == FILES


def test_without_calibration_files_get_empty_tiers_and_no_values(sqlite_store: Store) -> None:
    keys = fill(sqlite_store)
    report = recalibrate(sqlite_store)
    assert report.recalibrated == FILES
    assert report.expected_hash == expected_calibration_hash([])
    for key in keys[:3]:
        assert sqlite_store.get_files([key])[0]["mood_tiers"] == {name: [] for name in TIER_NAMES}
        assert all(t["calibrated_value"] is None for t in sqlite_store.file_tags_for_files([key]))
    # The first calibration changes the hash: everything is recalibrated again.
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    assert recalibrate(sqlite_store).recalibrated == FILES


def test_library_filter_and_max_files(sqlite_store: Store) -> None:
    fill(sqlite_store)
    sqlite_store.upsert_files([{"_key": "g1", "library_id": "lib2", "path": "/b/g1.flac",
                                "size": 1, "mtime_ns": 1, "scanned_at": 1, "analyzed_at": 2}])  # fmt: skip
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    assert recalibrate(sqlite_store, library_id="lib2").recalibrated == 1
    partial = recalibrate(sqlite_store, library_id="lib1", batch_size=4, max_files=10)
    assert (partial.recalibrated, partial.remaining) == (10, FILES - 10)
    assert recalibrate(sqlite_store, library_id="lib1").recalibrated == FILES - 10


def test_tier_config_is_used(sqlite_store: Store) -> None:
    keys = fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    recalibrate(sqlite_store, tier_config=TierConfig(include_heads=("danceability",)))
    terms = {t for k in keys for t in sqlite_store.get_files([k])[0]["mood_tiers"]["mood-loose"]}
    assert terms and terms <= {"danceable", "not danceable"}


def test_unanalysed_files_wait(sqlite_store: Store) -> None:
    populate(sqlite_store, {(EFFNET, "mood_happy"): {"happy": [0.5]}}, analyzed=False)
    assert recalibrate(sqlite_store).recalibrated == 0


def test_a_hash_that_does_not_stick_stops_the_run(sqlite_store: Store) -> None:
    fill(sqlite_store)

    class ForgetfulStore:
        def __init__(self, inner: Store) -> None:
            self.inner = inner

        def finish_claimed_recalibration(self, claim, expected_hash, mood_tiers):
            return self.inner.finish_claimed_recalibration(claim, "not-the-expected-hash", mood_tiers)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(RecalibrationStalledError):
        recalibrate(ForgetfulStore(sqlite_store), batch_size=5)  # type: ignore[arg-type]


def test_batch_size_validated(sqlite_store: Store) -> None:
    with pytest.raises(ValueError):
        recalibrate(sqlite_store, batch_size=0)


def test_predictions_written_while_tiers_are_computed_void_the_claim(sqlite_store: Store) -> None:
    """Analysis in another process writes between a batch's read and its finish: the file is
    not marked calibrated with tiers of its old predictions; it is claimed again and finished
    from the new ones in the same run."""
    from nomarr_pipeline.store import open_store

    keys = fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    expected = expected_calibration_hash(sqlite_store.list_calibrations())
    other = open_store(f"sqlite:///{sqlite_store.path}")  # type: ignore[attr-defined]
    fresh = [dict(t, value=0.42, calibrated_value=None) for t in sqlite_store.file_tags_for_files([keys[0]])]

    class AnalysisMeanwhile:
        def __init__(self, inner: Store) -> None:
            self.inner, self.reads = inner, 0

        def tier_inputs(self, file_ids):
            rows = self.inner.tier_inputs(file_ids)
            self.reads += 1
            if self.reads == 1:
                assert keys[0] in file_ids
                other.write_predictions(fresh)
            return rows

        def __getattr__(self, name):
            return getattr(self.inner, name)

    report = recalibrate(AnalysisMeanwhile(sqlite_store), readers=1)  # type: ignore[arg-type]
    assert (report.recalibrated, report.voided, report.remaining) == (FILES, 1, 0)
    assert {t["value"] for t in sqlite_store.file_tags_for_files([keys[0]])} == {0.42}
    for key in keys:
        check_file_is_recalibrated(sqlite_store, key, expected)


def test_reader_processes_give_the_same_result_as_inline(sqlite_store: Store, tmp_path) -> None:
    from nomarr_pipeline.store import open_store

    inline_store = open_store(f"sqlite:///{tmp_path / 'inline.db'}")
    keys = fill(sqlite_store)
    fill(inline_store)
    for store in (sqlite_store, inline_store):
        calibrate_heads(store, HEADS, now_ms=NOW)
    pooled = recalibrate(sqlite_store, batch_size=4, readers=2)
    inline = recalibrate(inline_store, batch_size=4, readers=1)
    assert (pooled.recalibrated, pooled.batches, pooled.remaining, pooled.readers) == (FILES, 6, 0, 2)
    assert (inline.recalibrated, inline.expected_hash, inline.readers) == (FILES, pooled.expected_hash, 1)
    for key in keys:
        check_file_is_recalibrated(sqlite_store, key, pooled.expected_hash)
    assert sqlite_store.get_files(keys) == inline_store.get_files(keys)
    assert sqlite_store.file_tags_for_files(keys) == inline_store.file_tags_for_files(keys)


def test_concurrent_finishers_on_postgres_end_as_a_single_writer(postgres_db) -> None:
    """PostgreSQL's reader processes finish their own batches, several at once, on their own
    connections; the store ends exactly where one writer finishing every batch ends."""
    from nomarr_pipeline.store import open_store

    server = postgres_db.server
    single_db = server.create_database()
    stores = [
        open_store(server.url(name), pg_password=server.password) for name in (postgres_db.name, single_db)
    ]
    pooled_store, single_store = stores
    keys = fill(pooled_store)
    fill(single_store)
    for store in stores:
        calibrate_heads(store, HEADS, now_ms=NOW)
    pooled = recalibrate(pooled_store, batch_size=2, readers=3)
    single = recalibrate(single_store, batch_size=2, readers=1)
    assert (pooled.recalibrated, pooled.remaining, pooled.readers, pooled.writers) == (FILES, 0, 3, 3)
    assert (single.recalibrated, single.expected_hash, single.writers) == (FILES, pooled.expected_hash, 1)
    for key in keys:
        check_file_is_recalibrated(pooled_store, key, pooled.expected_hash)
    assert pooled_store.get_files(keys) == single_store.get_files(keys)
    assert pooled_store.file_tags_for_files(keys) == single_store.file_tags_for_files(keys)
    for store in stores:
        store.close()
    server.drop_database(single_db)


def test_a_single_writer_store_finishes_in_the_writing_process(sqlite_store: Store) -> None:
    fill(sqlite_store)
    calibrate_heads(sqlite_store, HEADS, now_ms=NOW)
    report = recalibrate(sqlite_store, batch_size=4, readers=2)
    assert (report.recalibrated, report.readers, report.writers) == (FILES, 2, 1)


def test_readers_validated(sqlite_store: Store) -> None:
    with pytest.raises(ValueError, match="readers"):
        recalibrate(sqlite_store, readers=-1)


KILLED_RUN = """
import sys, time
from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.store import open_store

def progress(done, batch):
    print(done, flush=True)
    time.sleep(0.2)  # time for the test to kill this process between batches or inside one

if __name__ == "__main__":
    recalibrate(open_store(sys.argv[1]), batch_size=50, readers=int(sys.argv[2]), progress=progress)
"""


@pytest.mark.parametrize(
    ("engine", "readers"),
    # On PostgreSQL with 2 readers the readers finish batches themselves: killed mid-finish.
    [("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2)],
)
def test_a_killed_run_loses_nothing_and_a_rerun_finishes(
    request: pytest.FixtureRequest, tmp_path, engine: str, readers: int
) -> None:
    """SIGKILL (no cleanup, no rollback in Python): finished batches stay finished, the
    claimed ones still mismatch, and the next run completes every file correctly."""
    import signal
    import subprocess
    import sys

    from nomarr_pipeline.store import open_store

    count = 1000
    values = np.random.default_rng(5).uniform(0.0, 1.0, count).round(6).tolist()
    env = dict(os.environ)
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'killed.sqlite3'}"
        store = open_store(url)
    else:
        database = request.getfixturevalue("postgres_db")
        url, env["PGPASSWORD"] = database.url, database.password
        store = open_store(url, pg_password=database.password)
    keys = populate(store, {(EFFNET, "mood_happy"): {"happy": values, "non_happy": [1 - v for v in values]}})
    calibrate_heads(store, HEADS[:1], now_ms=NOW)
    expected = expected_calibration_hash(store.list_calibrations())
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    child = subprocess.Popen(
        [sys.executable, str(script), url, str(readers)], stdout=subprocess.PIPE, text=True,
        start_new_session=True, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        finished_before_kill = int(child.stdout.readline())
        os.killpg(child.pid, signal.SIGKILL)  # the writer and its reader processes
    finally:
        child.wait(timeout=60)
    remaining = store.count_files_needing_recalibration(expected)
    assert 0 < remaining <= count - finished_before_kill
    claimed = [f for f in store.get_files(keys) if (f["calibration_hash"] or "").startswith("claim:")]
    assert claimed, "the kill left claimed batches behind"
    report = recalibrate(store, batch_size=50, readers=1)
    assert report.recalibrated == remaining and report.remaining == 0
    for key in keys:
        check_file_is_recalibrated(store, key, expected)
