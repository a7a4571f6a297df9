"""Predictions written by 1, 2 and 4 processes at once, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_predictions_write.py                 # 200k files x 50 labels
    .venv/bin/python benchmarks/bench_predictions_write.py --files 20000 --processes 1 2
    NOMARR_PG_PASSWORD=... .venv/bin/python benchmarks/bench_predictions_write.py \\
        --store-url postgresql://user@host:5432/bench

For each engine and each process count: a fresh store with the files already scanned, then
the given number of processes (spawned, connected, released together) each write a contiguous
share of the files through ``store.write_predictions`` in batches of 64 files (the analysis
writer's flush size; 50 labels of one head per file). Prints rows/s of the whole run, from
release to the last process done. PostgreSQL's database is created per run on --store-url's
server (the user needs CREATEDB) or on a throwaway server this script starts.

``--compare-insert`` first times, in one process on PostgreSQL, the store's COPY path against
the same transaction with the rows sent by a pipelined ``executemany`` INSERT instead.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_calibration import open_url, postgres_url

MODEL_KEY = "effnet-discogs-effnet-1"
HEAD = "head_000"
BATCH_FILES = 64


def file_keys(files: int) -> list[str]:
    return [f"f{index:07d}" for index in range(files)]


def batch(keys: list[str], labels: int) -> list[dict[str, Any]]:
    return [
        {"_key": f"{key}|{MODEL_KEY}|{HEAD}|label_{j:03d}", "file_id": key, "model_key": MODEL_KEY,
         "head_name": HEAD, "label": f"label_{j:03d}", "value": (hash(key) + j) % 1000 / 1000,
         "std": 0.01, "calibrated_value": None, "nomarr_only": True, "tagger_version": "tv1"}
        for key in keys for j in range(labels)
    ]  # fmt: skip


def writer(url: str, keys: list[str], labels: int, ready: Any) -> None:
    store = open_url(url)
    store.count_documents("file_tags")  # connected, schema checked
    ready.wait()
    for start in range(0, len(keys), BATCH_FILES):
        store.write_predictions(batch(keys[start : start + BATCH_FILES], labels))
    store.close()


def timed_run(url: str, files: int, labels: int, processes: int) -> float:
    """Seconds from the release of ``processes`` writers to the last one done."""
    store = open_url(url)
    keys = file_keys(files)
    for start in range(0, files, 10_000):
        store.upsert_files(
            [{"_key": k, "library_id": "lib1", "path": f"/m/{k}.flac", "size": 1, "mtime_ns": 1,
              "scanned_at": 1} for k in keys[start : start + 10_000]]
        )  # fmt: skip
    store.close()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    share = -(-files // processes)
    children = [
        context.Process(target=writer, args=(url, keys[i * share : (i + 1) * share], labels, ready))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    ready.wait()
    started = time.perf_counter()
    for child in children:
        child.join()
    seconds = time.perf_counter() - started
    assert all(child.exitcode == 0 for child in children), [child.exitcode for child in children]
    check = open_url(url)
    assert check.count_documents("file_tags") == files * labels
    check.close()
    return seconds


def compare_insert(url: str, files: int, labels: int) -> dict[str, float]:
    """rows/s of write_predictions (COPY) vs the same transaction with executemany INSERTs."""
    from nomarr_pipeline.store.postgres import as_double
    from nomarr_pipeline.store.schema import FILE_TAGS, file_tag_rows

    store = open_url(url)
    keys = file_keys(files)
    store.upsert_files([{"_key": k, "library_id": "lib1", "path": k} for k in keys])
    conn = store._connection()  # type: ignore[attr-defined]  # benchmark-only shortcut
    columns = ", ".join(FILE_TAGS.columns)
    insert = f"INSERT INTO file_tags ({columns}) VALUES ({', '.join(['%s'] * len(FILE_TAGS.columns))})"
    lock = "SELECT _key FROM library_files WHERE _key = ANY(%s) ORDER BY _key FOR UPDATE"

    def executemany(docs: list[dict[str, Any]]) -> None:
        ids = sorted({d["file_id"] for d in docs})
        with conn.transaction():
            conn.execute(f"UPDATE library_files SET calibration_hash = NULL WHERE _key IN ({lock})", (ids,))
            conn.execute(
                "DELETE FROM file_tags WHERE file_id = ANY(%s) AND model_key = %s AND head_name = %s",
                (ids, MODEL_KEY, HEAD),
            )
            with conn.cursor() as cur:
                cur.executemany(insert, list(file_tag_rows(docs, as_double).values()))

    rates = {}
    for name, write in (("copy", store.write_predictions), ("executemany", executemany),
                        ("copy again", store.write_predictions)):  # fmt: skip
        conn.execute("TRUNCATE file_tags")
        started = time.perf_counter()
        for start in range(0, files, BATCH_FILES):
            write(batch(keys[start : start + BATCH_FILES], labels))
        rates[name] = files * labels / (time.perf_counter() - started)
    store.close()
    return rates


def fresh_urls(engine: str, base: str, db_dir: Path) -> str:
    if engine == "sqlite":
        return f"sqlite:///{db_dir / f'nomarr_bench_write_{uuid.uuid4().hex[:8]}.sqlite3'}"
    name = f"bench_write_{uuid.uuid4().hex[:8]}"
    admin = open_url(base)
    admin._connection().execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    admin.close()
    return base.rsplit("/", 1)[0] + f"/{name}"


def drop(engine: str, url: str, base: str) -> None:
    if engine == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = open_url(base)
    admin._connection().execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')  # type: ignore[attr-defined]
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--store-url", help="a PostgreSQL database whose server gets one database per run")
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compare-insert", type=int, metavar="FILES", default=0,
                        help="first compare COPY with executemany on this many files")  # fmt: skip
    args = parser.parse_args()
    args.db_dir.mkdir(parents=True, exist_ok=True)
    rows = args.files * args.labels
    print(
        f"{args.files:,} files x {args.labels} labels = {rows:,} rows per run, batches of {BATCH_FILES} files"
    )
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results: dict[tuple[str, int], float] = {}
    with postgres_url(args) as pg_url:
        if pg_url and args.compare_insert:
            url = fresh_urls("postgres", pg_url, args.db_dir)
            try:
                rates = compare_insert(url, args.compare_insert, args.labels)
            finally:
                drop("postgres", url, pg_url)
            shown = ", ".join(f"{name} {rate:,.0f} rows/s" for name, rate in rates.items())
            print(f"PostgreSQL, one process: {shown}")
        engines = {"sqlite": "", **({"postgres": pg_url} if pg_url else {})}
        for engine, base in engines.items():
            for processes in args.processes:
                url = fresh_urls(engine, base, args.db_dir)
                try:
                    seconds = timed_run(url, args.files, args.labels, processes)
                finally:
                    drop(engine, url, base)
                results[(engine, processes)] = seconds
                print(
                    f"{engine:<9} {processes} process(es): {seconds:7.2f} s, {rows / seconds:>10,.0f} rows/s"
                )
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for engine in ("sqlite", "postgres"):
        base = results.get((engine, args.processes[0]))
        if base:
            scaling = ", ".join(
                f"{p}: x{base / results[(engine, p)]:.2f}" for p in args.processes if (engine, p) in results
            )
            print(f"{engine} scaling vs {args.processes[0]} process(es): {scaling}")


if __name__ == "__main__":
    main()
