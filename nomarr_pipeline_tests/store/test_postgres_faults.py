"""The PostgreSQL store under bad configuration and faults, against real servers: each problem
is one line that names what to fix, never the password, and loses nothing; a server restart
within the retry window goes unnoticed, a longer outage fails the run clearly and a re-run
finishes it."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.store import Store, StoreError, open_store
from nomarr_pipeline.store.postgres import SCHEMA_VERSION
from nomarr_pipeline_tests.conftest import PostgresDatabase
from nomarr_pipeline_tests.postgres_server import PostgresServer, free_port

MODEL, HEAD = "effnet-discogs-effnet-1", "mood_happy"


def _one_line_error(call, *fragments: str, secret: str | None = None) -> str:
    with pytest.raises(StoreError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    if secret:
        assert secret not in message
    return message


def test_unreachable_server(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://nomarr@127.0.0.1:{free_port()}/nomarr"
    shown = url.replace("nomarr@", "")  # redacted: no user or password in messages
    store = open_store(url)  # lazy: nothing is sent yet
    message = _one_line_error(store.list_libraries, f"cannot connect to PostgreSQL at {shown}",
                              "Connection refused", "is the server running")  # fmt: skip
    assert "gave up" not in message  # the first connection is not retried
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0].startswith(f"error: cannot use the store at {shown}") and len(err) == 2
    )
    assert err[1].startswith("next: ") and "NOMARR_PG_PASSWORD" in err[1]


def test_wrong_or_missing_password(postgres_db: PostgresDatabase) -> None:
    wrong = open_store(postgres_db.url, pg_password="not-the-password-42")
    _one_line_error(wrong.list_libraries, "refused user 'nomarr_test'", "NOMARR_PG_PASSWORD",
                    secret="not-the-password-42")  # fmt: skip
    _one_line_error(open_store(postgres_db.url).list_libraries, "wrong or missing password")


def test_libpq_password_sources_work_too(
    postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", postgres_db.password)
    assert open_store(postgres_db.url).list_libraries() == []


def test_missing_database(postgres_server: PostgresServer) -> None:
    store = open_store(postgres_server.url("no_such_db"), pg_password=postgres_server.password)
    _one_line_error(store.list_libraries, "database 'no_such_db' does not exist", "createdb -O nomarr_test")


@pytest.fixture
def limited_user(postgres_db: PostgresDatabase) -> Iterator[tuple[str, str]]:
    """A login role with no privileges beyond PostgreSQL's defaults (PUBLIC may not create
    tables in schema public since PostgreSQL 15)."""
    role, password, server = "nomarr_limited", "limited-secret-7", postgres_db.server
    server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    yield role, password
    server.execute(f"DROP OWNED BY {role}", postgres_db.name)
    server.execute(f"DROP ROLE {role}")


def test_no_privileges_on_the_schema(postgres_db: PostgresDatabase, limited_user: tuple[str, str]) -> None:
    role, password = limited_user
    url = postgres_db.server.url(postgres_db.name, user=role)
    postgres_db.server.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC", postgres_db.name)
    # A fresh database: the user cannot create the tables.
    message = _one_line_error(open_store(url, pg_password=password).list_libraries,
                              "lacks privileges", "GRANT USAGE, CREATE ON SCHEMA public TO nomarr_limited",
                              secret=password)  # fmt: skip
    assert "permission denied for schema public" in message
    # Tables made by the owner, but no privileges on them: the same advice.
    owner = open_store(postgres_db.url, pg_password=postgres_db.password)
    owner.upsert_files([{"_key": "a", "library_id": "lib1", "path": "/a.mp3"}])
    _one_line_error(open_store(url, pg_password=password).list_libraries, "lacks privileges",
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public")  # fmt: skip
    postgres_db.server.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}", postgres_db.name
    )
    assert open_store(url, pg_password=password).get_files(["a"])[0]["path"] == "/a.mp3"  # nothing lost


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://nomarr@127.0.0.1:notaport/nomarr", "malformed PostgreSQL URL"),
        ("postgresql://nomarr@127.0.0.1/nomarr?no_such_option=1", "malformed PostgreSQL URL"),
        ("postgresql://nomarr:hunter2-secret@127.0.0.1/nomarr", "carries a password"),
    ],
)
def test_malformed_url(url: str, expected: str) -> None:
    message = _one_line_error(lambda: open_store(url), expected, "NOMARR_", secret="hunter2-secret")
    assert "postgresql://" in message


def _open_and_report_version(url: str, password: str, start: float) -> int:
    time.sleep(max(0.0, start - time.time()))
    store = open_store(url, pg_password=password)
    store.list_libraries()
    return store._count("SELECT version AS n FROM nomarr_meta")  # type: ignore[attr-defined]


def test_processes_opening_a_fresh_database_at_once_do_not_race(postgres_db: PostgresDatabase) -> None:
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3  # after every interpreter has started
    with context.Pool(4) as pool:
        versions = pool.starmap(
            _open_and_report_version, [(postgres_db.url, postgres_db.password, start)] * 4
        )
    assert versions == [SCHEMA_VERSION] * 4


# ---- the server going away ------------------------------------------------------------------------


def _library(store: Store, files: int) -> list[str]:
    keys = [f"{i:032x}" for i in range(files)]
    store.upsert_files(
        [{"_key": k, "library_id": "lib1", "path": f"/m/{k}.mp3", "analyzed_at": 1} for k in keys]
    )
    store.write_predictions(
        [{"_key": f"{k}|{MODEL}|{HEAD}|{label}", "file_id": k, "model_key": MODEL, "head_name": HEAD,
          "label": label, "value": (i % 97) / 97, "std": 0.01, "nomarr_only": True, "tagger_version": "v"}
         for i, k in enumerate(keys) for label in ("happy", "non_happy")]
    )  # fmt: skip
    store.save_calibrations(
        [{"_key": f"{MODEL}:{HEAD}:{label}", "model_key": MODEL, "head_name": HEAD, "label": label,
          "version": 1, "p5": 0.1, "p95": 0.9} for label in ("happy", "non_happy")], []
    )  # fmt: skip
    return keys


def _state(store: Store, keys: list[str]) -> list[tuple[object, ...]]:
    files = {
        f["_key"]: (f["calibration_hash"], f["mood_tiers"], f["file_tags_pending"])
        for f in store.get_files(keys)
    }
    tags = [(t["file_id"], t["label"], t["calibrated_value"]) for t in store.file_tags_for_files(keys)]
    return [*sorted(files.items()), *tags]


def test_a_restart_within_the_retry_window_goes_unnoticed(own_postgres_server: PostgresServer) -> None:
    database = own_postgres_server.create_database()
    store = open_store(own_postgres_server.url(database), pg_password=own_postgres_server.password)
    keys = _library(store, 10)
    own_postgres_server.stop("fast")
    restarter = threading.Timer(1.0, own_postgres_server.start)
    restarter.start()
    try:
        assert len(store.get_files(keys)) == 10  # the dropped connection is replaced
    finally:
        restarter.join()


def test_server_gone_mid_run_fails_clearly_and_a_re_run_finishes(own_postgres_server: PostgresServer) -> None:
    reference_db, database = own_postgres_server.create_database(), own_postgres_server.create_database()
    reference = open_store(own_postgres_server.url(reference_db), pg_password=own_postgres_server.password)
    store = open_store(own_postgres_server.url(database), pg_password=own_postgres_server.password)
    keys = _library(reference, 300)
    _library(store, 300)
    config = TierConfig(exclude_heads=())
    assert recalibrate(reference, tier_config=config, batch_size=50, readers=1).remaining == 0

    def stop_after_two_batches(done: int, batch: int) -> None:
        if done == 100:
            own_postgres_server.stop("immediate")  # as if the machine lost power

    try:
        message = _one_line_error(
            lambda: recalibrate(store, tier_config=config, batch_size=50, readers=1,
                                progress=stop_after_two_batches),
            "cannot connect to PostgreSQL at", "gave up after", "a re-run resumes",
        )  # fmt: skip
        assert own_postgres_server.password not in message
    finally:
        own_postgres_server.start()
    expected = expected_calibration_hash(store.list_calibrations())
    # Finishes commit without waiting for the WAL flush: the crash may lose the batches
    # finished last (they still hold their claim), never part of one.
    remaining = store.count_files_needing_recalibration(expected)
    assert remaining in (200, 250, 300)
    files = store.get_files(keys)
    assert sum(f["calibration_hash"] == expected for f in files) == 300 - remaining
    finished = {f["_key"] for f in files if f["calibration_hash"] == expected}
    calibrated = {t["file_id"] for t in store.file_tags_for_files(keys) if t["calibrated_value"] is not None}
    assert calibrated <= finished

    report = recalibrate(store, tier_config=config, batch_size=50, readers=1)
    assert report.remaining == 0 and report.recalibrated == remaining
    assert _state(store, keys) == _state(reference, keys)


def _recalibrate_and_die(url: str, password: str) -> None:
    """Recalibrate in batches of 50 and SIGKILL this process (and its store connection) after
    the second batch is stored: no cleanup, no rollback of anything but the open transaction."""
    import os
    import signal

    def die_after_two_batches(done: int, batch: int) -> None:
        if done == 100:
            os.kill(os.getpid(), signal.SIGKILL)

    store = open_store(url, pg_password=password)
    recalibrate(store, tier_config=TierConfig(exclude_heads=()), batch_size=50, readers=1,
                progress=die_after_two_batches)  # fmt: skip


def test_a_recalibration_killed_mid_run_is_finished_by_a_re_run(own_postgres_server: PostgresServer) -> None:
    reference_db, database = own_postgres_server.create_database(), own_postgres_server.create_database()
    reference = open_store(own_postgres_server.url(reference_db), pg_password=own_postgres_server.password)
    store = open_store(own_postgres_server.url(database), pg_password=own_postgres_server.password)
    keys = _library(reference, 300)
    _library(store, 300)
    config = TierConfig(exclude_heads=())
    assert recalibrate(reference, tier_config=config, batch_size=50, readers=1).remaining == 0

    killed = multiprocessing.get_context("spawn").Process(
        target=_recalibrate_and_die, args=(own_postgres_server.url(database), own_postgres_server.password)
    )
    killed.start()
    killed.join(120)
    assert killed.exitcode == -9
    expected = expected_calibration_hash(store.list_calibrations())
    assert store.count_files_needing_recalibration(expected) == 200  # claimed files still need it
    assert recalibrate(store, tier_config=config, batch_size=50, readers=1).remaining == 0
    assert _state(store, keys) == _state(reference, keys)
