"""Moving a library to another store: SQLite -> PostgreSQL -> SQLite round trip, a copy killed
mid-way and finished by a re-run, and a verification that catches a copy that differs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.store import DOCUMENT_COLLECTIONS, Store, open_store
from nomarr_pipeline.store.migrate import FOLDER_CACHE, canonical, migrate_store
from nomarr_pipeline_tests.calibration.binning import label_histogram
from nomarr_pipeline_tests.conftest import PostgresDatabase

MODEL = "effnet-discogs-effnet-1"
HEADS = {"mood_happy": ("happy", "non_happy"), "genre": ("Hip Hop", "Folk, World, & Country", "Rock")}


def fill(store: Store, files: int = 60) -> None:
    """A store as the pipeline leaves it: libraries, scanned/analysed/calibrated/written files,
    predictions of two heads (one value NaN, one outside [0, 1]), calibrations with history."""
    for lib in ("lib1", "lib2"):
        store.ensure_library({"_key": lib, "name": lib, "root_path": f"/music/{lib}",
                              "auto_write_tags": True, "file_write_mode": "minimal",
                              "write_raw_scores": False, "created_at": 7})  # fmt: skip
        store.save_folder_cache(
            lib, {f"/music/{lib}": (1_700_000_000_123_456_789, 3), f"/music/{lib}/ä b": (5, 1)}
        )
    keys = [f"{i:032x}" for i in range(files)]
    store.upsert_files(
        [
            {"_key": key, "library_id": "lib1" if i % 3 else "lib2", "path": f"/music/lib/{i} ü.flac",
             "size": 1000 + i, "mtime_ns": 1_700_000_000_000_000_000 + i, "duration_s": 30.5,
             "scanned_at": 10, "analyzed_at": 20 if i % 7 else None,
             "analysis_error": None if i % 7 else "decoder crashed", "custom_field": {"n": i}}
            for i, key in enumerate(keys)
        ]
    )  # fmt: skip
    store.write_predictions(
        [
            {"_key": f"{key}|{MODEL}|{head}|{label}", "file_id": key, "model_key": MODEL, "head_name": head,
             "label": label,
             "value": math.nan if (i, j) == (4, 0) else (i * 7 + j) % 11 / 10 + (j == 2) * 0.5,
             "std": 0.01 * j, "calibrated_value": None, "nomarr_only": True, "tagger_version": "tv1"}
            for i, key in enumerate(keys) if i % 7
            for head, labels in HEADS.items() for j, label in enumerate(labels)
        ]
    )  # fmt: skip
    states, history = [], []
    for head, labels in HEADS.items():
        for label in labels:
            key = f"{MODEL}:{head}:{label}"
            states.append({"_key": key, "model_key": MODEL, "head_name": head, "label": label,
                           "calibration_def_hash": "d", "version": 1, "p5": 0.1, "p95": 0.9, "n": 50,
                           "histogram": {"lo": 0.0, "hi": 1.0, "bins": 10000, "bin_width": 0.0001},
                           "underflow_count": 0, "overflow_count": 2, "created_at": 1, "updated_at": 2,
                           "last_computation_at": 2, "computed_p5": 0.11})  # fmt: skip
            history += [{"_key": f"{key}@{t}", "calibration_key": key, "snapshot_at": t, "p5": 0.1,
                         "p95": 0.9, "n": 50 + t, "underflow_count": 0, "overflow_count": 2, "p5_delta": None,
                         "p95_delta": None, "n_delta": t or None} for t in (0, 1, 2)]  # fmt: skip
    store.save_calibrations(states, history)
    # Some files finished recalibration (calibrated values stored), some of them writing too.
    claimed = store.claim_files_for_recalibration("H", "run", "run-1", 20)
    store.finish_claimed_recalibration("run-1", "H", dict.fromkeys(claimed))
    store.upsert_files(
        [{"_key": key, "calibration_hash": "H", "mood_tiers": {"mood-loose": ["happy"]},
          "file_tags_pending": bool(i % 2)} for i, key in enumerate(keys[:20]) if i % 7]
    )  # fmt: skip


def contents(store: Store) -> dict[str, list[object]]:
    """Every collection as sorted canonical documents, plus the folder caches."""
    found: dict[str, list[object]] = {}
    for collection in DOCUMENT_COLLECTIONS:
        docs = [canonical(d) for page in store.iter_documents(collection, batch_size=50) for d in page]
        found[collection] = sorted(docs, key=repr)
    found[FOLDER_CACHE] = [
        (lib["_key"], store.load_folder_cache(lib["_key"])) for lib in store.list_libraries()
    ]
    return found


def test_sqlite_to_postgres_to_sqlite_round_trip(tmp_path: Path, postgres_db: PostgresDatabase) -> None:
    original = open_store(f"sqlite:///{tmp_path / 'original.sqlite3'}")
    fill(original)
    middle = open_store(postgres_db.url, pg_password=postgres_db.password)
    seen: list[tuple[str, int, int]] = []
    report = migrate_store(original, middle, batch_size=37, progress=lambda *p: seen.append(p))
    assert report.verified, [c.describe() for c in report.mismatches()]
    assert {c.collection: c.target_count for c in report.checks}["file_tags"] == 51 * 5
    assert ("file_tags", 255, 255) in seen and ("file_tags", 37, 255) in seen

    back = open_store(f"sqlite:///{tmp_path / 'back.sqlite3'}")
    assert migrate_store(middle, back, batch_size=1000).verified
    assert contents(back) == contents(middle) == contents(original)
    # The copies work as stores: same histogram, same recalibration backlog.
    for store in (middle, back):
        rock = label_histogram(original, MODEL, "genre", "Rock", 0.0, 1.0, 10)
        assert label_histogram(store, MODEL, "genre", "Rock", 0.0, 1.0, 10) == rock
        assert store.count_files_needing_recalibration("H") == original.count_files_needing_recalibration("H")
        keys = [f"{MODEL}:genre:Rock", f"{MODEL}:mood_happy:happy"]
        assert store.recent_history(keys, per_key=5) == original.recent_history(keys, per_key=5)


def test_a_copy_killed_mid_way_is_finished_by_a_re_run(
    tmp_path: Path,
    postgres_db: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    source = open_store(source_url)
    fill(source)
    # A real crash: the copying process SIGKILLs itself after two pages of predictions.
    script = textwrap.dedent(f"""
        import os, signal
        from nomarr_pipeline.store import open_store
        from nomarr_pipeline.store.migrate import migrate_store

        def progress(collection, done, total):
            if collection == "file_tags" and done >= 40:
                os.kill(os.getpid(), signal.SIGKILL)

        target = open_store({postgres_db.url!r}, pg_password=os.environ["PW"])
        migrate_store(open_store({source_url!r}), target, batch_size=20, progress=progress)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PW": postgres_db.password})
    assert killed.returncode == -9
    target = open_store(postgres_db.url, pg_password=postgres_db.password)
    assert 0 < target.count_documents("file_tags") < source.count_documents("file_tags")
    assert target.count_documents("calibration_state") == 0

    monkeypatch.setenv("NOMARR_STORE_URL", source_url)
    monkeypatch.setenv("NOMARR_PG_PASSWORD", postgres_db.password)
    assert cli.main(["migrate-store", "--to", postgres_db.url, "--batch-size", "25"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "ok  file_tags: 255 documents" in out
    assert postgres_db.password not in out
    assert contents(target) == contents(source)


def test_verification_catches_documents_the_source_does_not_have(
    tmp_path: Path,
    postgres_db: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    fill(open_store(source_url), files=10)
    target = open_store(postgres_db.url, pg_password=postgres_db.password)
    target.upsert_files([{"_key": "f" * 32, "library_id": "elsewhere", "path": "/other.mp3"}])
    monkeypatch.setenv("NOMARR_STORE_URL", source_url)
    monkeypatch.setenv("NOMARR_PG_PASSWORD", postgres_db.password)
    assert cli.main(["migrate-store", "--to", postgres_db.url]) == 2
    captured = capsys.readouterr()
    assert "MISMATCH  library_files: source 10 documents" in captured.out
    assert "error: the copy differs from the source in library_files" in captured.err
    assert "next: copy into an empty store" in captured.err


def test_migrating_into_the_configured_store_itself_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'same.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    assert cli.main(["migrate-store", "--to", url]) == 2
    assert "--to names the configured store itself" in capsys.readouterr().err
