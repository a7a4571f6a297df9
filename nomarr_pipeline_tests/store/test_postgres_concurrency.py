"""Several processes on one PostgreSQL database at once: two write predictions for different
heads, one recalibrates, one records tag writes, all on the same files. No error reaches any
of them, no row is lost or duplicated, and the final state equals a sequential run."""

from __future__ import annotations

import multiprocessing
from typing import Any

from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.store import DOCUMENT_COLLECTIONS, Store, open_store
from nomarr_pipeline.store.migrate import canonical
from nomarr_pipeline_tests.conftest import PostgresDatabase

MODEL = "effnet-discogs-effnet-1"
HEADS = {"mood_happy": ("happy", "non_happy"), "danceability": ("danceable", "not_danceable")}
FILES = [f"{i:032x}" for i in range(240)]
BATCH = 16
CONFIG = TierConfig(exclude_heads=())


def _tags(head: str, generation: int) -> list[dict[str, Any]]:
    return [
        {"_key": f"{key}|{MODEL}|{head}|{label}", "file_id": key, "model_key": MODEL, "head_name": head,
         "label": label, "value": ((i * 31 + j * 7 + generation * 13) % 100) / 100, "std": 0.01,
         "nomarr_only": True, "tagger_version": f"v{generation}"}
        for i, key in enumerate(FILES) for j, label in enumerate(HEADS[head])
    ]  # fmt: skip


def _prepare(store: Store) -> None:
    store.upsert_files(
        [{"_key": k, "library_id": "lib1", "path": f"/m/{k}.mp3", "analyzed_at": 1} for k in FILES]
    )
    for head in HEADS:
        store.write_predictions(_tags(head, generation=0))
    store.save_calibrations(
        [{"_key": f"{MODEL}:{head}:{label}", "model_key": MODEL, "head_name": head, "label": label,
          "version": 1, "p5": 0.1, "p95": 0.9} for head, labels in HEADS.items() for label in labels], []
    )  # fmt: skip
    assert recalibrate(store, tier_config=CONFIG, batch_size=50, readers=1).remaining == 0


# ---- the workers (each in its own process; module-level so that spawn can import them) -------


def write_head(url: str, password: str, head: str) -> None:
    store = open_store(url, pg_password=password)
    tags = _tags(head, generation=1)
    per_file = len(HEADS[head])
    for start in range(0, len(tags), BATCH * per_file):
        store.write_predictions(tags[start : start + BATCH * per_file])


def record_writes(url: str, password: str) -> None:
    store = open_store(url, pg_password=password)
    for start in range(0, len(FILES), BATCH):
        store.record_writes(
            [{"_key": k, "written_at": 1000 + i, "write_error": None if i % 5 else "denied"}
             for i, k in enumerate(FILES[start : start + BATCH], start=start)]
        )  # fmt: skip


def recalibrate_until(url: str, password: str, writers_done: Any) -> None:
    store = open_store(url, pg_password=password)
    while not writers_done.is_set():
        recalibrate(store, tier_config=CONFIG, batch_size=BATCH, readers=1)
    assert recalibrate(store, tier_config=CONFIG, batch_size=BATCH, readers=1).remaining == 0


def _state(store: Store) -> dict[str, list[Any]]:
    return {
        collection: sorted(
            (canonical(doc) for page in store.iter_documents(collection, batch_size=500) for doc in page),
            key=repr,
        )
        for collection in DOCUMENT_COLLECTIONS
    }


def test_four_processes_at_once_end_where_a_sequential_run_ends(postgres_db: PostgresDatabase) -> None:
    server, password = postgres_db.server, postgres_db.password
    sequential_db = server.create_database("sequential")
    try:
        sequential_url = server.url(sequential_db)
        sequential = open_store(sequential_url, pg_password=password)
        _prepare(sequential)
        for head in HEADS:
            write_head(sequential_url, password, head)
        record_writes(sequential_url, password)
        assert recalibrate(sequential, tier_config=CONFIG, batch_size=BATCH, readers=1).remaining == 0
        expected = _state(sequential)
    finally:
        server.drop_database(sequential_db)

    store = open_store(postgres_db.url, pg_password=password)
    _prepare(store)
    context = multiprocessing.get_context("spawn")
    writers_done = context.Event()
    writers = [context.Process(target=write_head, args=(postgres_db.url, password, head)) for head in HEADS]
    others = [
        context.Process(target=record_writes, args=(postgres_db.url, password)),
        context.Process(target=recalibrate_until, args=(postgres_db.url, password, writers_done)),
    ]
    for process in (*writers, *others):
        process.start()
    for process in writers:
        process.join(300)
    writers_done.set()
    for process in others:
        process.join(300)
    assert [p.exitcode for p in (*writers, *others)] == [0, 0, 0, 0]

    found = _state(store)
    assert {c: len(docs) for c, docs in found.items()} == {c: len(docs) for c, docs in expected.items()}
    assert len(found["file_tags"]) == len(FILES) * 4
    for collection in DOCUMENT_COLLECTIONS:
        assert found[collection] == expected[collection], collection
