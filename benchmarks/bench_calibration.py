"""Calibration generation at library scale: DB histograms vs loading every value.

    .venv/bin/python benchmarks/bench_calibration.py                 # 200k files x 50 labels
    .venv/bin/python benchmarks/bench_calibration.py --files 20000 --labels 10
    NOMARR_PG_PASSWORD=... .venv/bin/python benchmarks/bench_calibration.py \
        --store-url postgresql://user@host:5432/bench

Fills a SQLite store with ``files x labels`` predictions (cached per size under --db-dir,
reused by bench_recalibration.py) and a PostgreSQL store with the very same values (the
database at --store-url, or a throwaway server this script starts when the PostgreSQL
binaries are installed; --no-postgres skips it), then times, each in a fresh child process:

* ``histogram``: ``calibrate_heads`` over every head (one grouped query per label, p5/p95
  from the bins, states saved), on each engine;
* ``load_all``: the old approach on SQLite, every value loaded into Python and ``np.percentile``.

Peak RSS growth is measured inside the child: VmHWM is reset through /proc/self/clear_refs
after imports and the store connection are set up, so the figure is the work's own growth.
Goals: histogram <= 5 s for 10 M values, growth <= 50 MB, >= 10x less memory than load_all;
PostgreSQL's histogram time <= SQLite's in the same run, its growth <= 50 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# The plain head description lives with the tests; make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nomarr_pipeline.calibration.generation import calibrate_heads
from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline_tests.calibration.heads import HeadRef

MODEL_KEY = "effnet-discogs-effnet-1"
LABELS_PER_HEAD = 2
FILL_CHUNK_FILES = 2000


# ---- memory -------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0) and return that baseline in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    return _status_kib("VmHWM")


# ---- data -----------------------------------------------------------------------------------


def heads_for(labels: int) -> list[HeadRef]:
    """``labels`` labels as two-class heads (``head_000: label_000a/label_000b``)."""
    heads = []
    for index in range(0, labels, LABELS_PER_HEAD):
        names = tuple(
            f"label_{index // LABELS_PER_HEAD:03d}{'ab'[j]}"
            for j in range(min(LABELS_PER_HEAD, labels - index))
        )
        heads.append(HeadRef(MODEL_KEY, f"head_{index // LABELS_PER_HEAD:03d}", 1, names))
    return heads


def db_path(db_dir: Path, files: int, labels: int) -> Path:
    return db_dir / f"nomarr_bench_{files}x{labels}.sqlite3"


def generated(
    files: int, labels: int, seed: int = 1
) -> Iterator[tuple[list[str], list[tuple[str, str]], np.ndarray]]:
    """Chunks of (file keys, (head, label) pairs, values[file, pair]): the same values for
    every engine. Every label its own shape: beta(a, b) with a, b in [0.5, 5]."""
    rng = np.random.default_rng(seed)
    heads = heads_for(labels)
    pairs = [(head.head_name, label) for head in heads for label in head.labels]
    shapes = rng.uniform(0.5, 5.0, size=(len(pairs), 2))
    for first in range(0, files, FILL_CHUNK_FILES):
        count = min(FILL_CHUNK_FILES, files - first)
        keys = [f"f{index:07d}" for index in range(first, first + count)]
        values = np.stack([rng.beta(a, b, count).astype(np.float32) for a, b in shapes], axis=1).astype(float)
        yield keys, pairs, values


def fill(path: Path, files: int, labels: int, seed: int = 1) -> None:
    """Write files x labels predictions straight through the store's connection (benchmark
    only): file-major order, so the clustered primary key grows by appending; the secondary
    indexes are dropped meanwhile and built once at the end (a sort instead of 30 M random
    inserts: what keeps a 30 M-value fill in minutes)."""
    store = open_store(f"sqlite:///{path}")
    conn = store._conn  # type: ignore[attr-defined]  # benchmark-only shortcut
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB for the index builds
    started = time.perf_counter()
    conn.execute("BEGIN")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('library_files', 'file_tags')"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    for keys, pairs, values in generated(files, labels, seed):
        conn.executemany(
            "INSERT INTO library_files (_key, library_id, path, size, mtime_ns, scanned_at, "
            "analyzed_at, file_tags_pending) VALUES (?, 'lib1', ?, 1, 1, 1, 2, 0)",
            [(key, f"/music/{key}.flac") for key in keys],
        )
        conn.executemany(
            "INSERT INTO file_tags (_key, file_id, model_key, head_name, label, value, std, "
            "calibrated_value, nomarr_only, tagger_version) "
            "VALUES (?, ?, ?, ?, ?, ?, 0.01, NULL, 1, 'tv1')",
            (
                (f"{key}|{MODEL_KEY}|{head_name}|{label}", key, MODEL_KEY, head_name, label, value)
                for row, key in enumerate(keys)
                for (head_name, label), value in zip(pairs, values[row].tolist(), strict=True)
            ),
        )
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    store.close()
    print(f"filled {files} files x {labels} labels in {time.perf_counter() - started:.1f} s")


def open_url(url: str) -> Store:
    return open_store(url, pg_password=os.environ.get("NOMARR_PG_PASSWORD"))


def fill_postgres(url: str, files: int, labels: int, seed: int = 1) -> None:
    """The same predictions into PostgreSQL with COPY (benchmark only), unless the database
    already holds exactly this fill (marked by a comment on file_tags)."""
    store = open_url(url)
    store.list_libraries()  # schema
    conn = store._connection()  # type: ignore[attr-defined]  # benchmark-only shortcut
    marker = f"bench fill {files}x{labels} seed {seed}"
    if conn.execute("SELECT obj_description('file_tags'::regclass)").fetchone()[0] == marker:
        return
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("TRUNCATE library_files, file_tags, calibration_state, calibration_history")
        # The histogram index is built once at the end (a sort, in parallel) instead of taking
        # every row in random order; the primary key grows by appending (file-major order).
        histogram_index = conn.execute(
            "SELECT pg_get_indexdef('idx_file_tags_histogram'::regclass)"
        ).fetchone()[0]
        conn.execute("DROP INDEX idx_file_tags_histogram")
        for keys, pairs, values in generated(files, labels, seed):
            with conn.cursor().copy(
                "COPY library_files (_key, library_id, path, size, mtime_ns, scanned_at, analyzed_at, "
                "file_tags_pending) FROM STDIN"
            ) as copy:
                for key in keys:
                    copy.write_row((key, "lib1", f"/music/{key}.flac", 1, 1, 1, 2, False))
            with conn.cursor().copy(
                "COPY file_tags (_key, file_id, model_key, head_name, label, value, std, nomarr_only, "
                "tagger_version) FROM STDIN"
            ) as copy:
                for row, key in enumerate(keys):
                    for (head_name, label), value in zip(pairs, values[row].tolist(), strict=True):
                        copy.write_row((f"{key}|{MODEL_KEY}|{head_name}|{label}", key, MODEL_KEY,
                                        head_name, label, value, 0.01, True, "tv1"))  # fmt: skip
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(histogram_index)
        conn.execute(f"COMMENT ON TABLE file_tags IS '{marker}'")  # type: ignore[arg-type]
    conn.execute("VACUUM (ANALYZE) library_files")
    conn.execute("VACUUM (ANALYZE) file_tags")
    store.close()
    print(f"filled PostgreSQL: {files} files x {labels} labels in {time.perf_counter() - started:.1f} s")


@contextlib.contextmanager
def postgres_url(args: argparse.Namespace) -> Iterator[str | None]:
    """--store-url, or a throwaway server (the test suite's helper) for the length of the run."""
    if not args.postgres:
        yield None
        return
    if args.store_url:
        yield args.store_url
        return
    from nomarr_pipeline_tests.postgres_server import SKIP_REASON, running_server

    if SKIP_REASON:
        print(f"no PostgreSQL run: {SKIP_REASON}; or pass --store-url")
        yield None
        return
    # A durable server as in production (the test helper turns fsync off): what the store
    # relaxes itself (recalibration's asynchronous commits) is then what gets measured.
    settings = {"shared_buffers": "1GB", "max_wal_size": "8GB", "fsync": "on"}
    # A `kill` of the benchmark still stops its server (the block's cleanup runs on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with running_server(settings=settings) as server:
        os.environ["NOMARR_PG_PASSWORD"] = server.password
        print(f"throwaway PostgreSQL server: {', '.join(f'{k}={v}' for k, v in settings.items())}")
        yield server.url(server.create_database("bench"))


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-url", help="PostgreSQL URL to fill and time (password: NOMARR_PG_PASSWORD); "
                        "default: a throwaway server started by this script")  # fmt: skip
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                        help="also run on PostgreSQL")  # fmt: skip


def ensure_db(db_dir: Path, files: int, labels: int) -> Path:
    db_dir.mkdir(parents=True, exist_ok=True)
    path = db_path(db_dir, files, labels)
    marker = path.with_suffix(".complete")
    if not marker.exists():
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        fill(path, files, labels)
        marker.write_text("ok")
    return path


# ---- phases (each run in its own child process) ---------------------------------------------


def phase_histogram(url: str, labels: int) -> dict[str, float]:
    store = open_url(url)
    store.list_calibrations()  # open the connection and schema before the baseline
    heads = heads_for(labels)
    baseline = reset_peak_rss()
    started = time.perf_counter()
    reports = calibrate_heads(store, heads, stop_on_error=True)
    seconds = time.perf_counter() - started
    query_seconds = _time_one_histogram(store, heads[0])
    return {
        "seconds": seconds,
        "growth_kib": peak_rss_kib() - baseline,
        "values": sum(report.n for report in reports),
        "one_label_query_seconds": query_seconds,
    }


def _time_one_histogram(store, head: HeadRef) -> float:
    started = time.perf_counter()
    list(store.histograms(head.model_key, head.head_name, head.labels[:1], 0.0, 1.0, 10_000))
    return time.perf_counter() - started


def phase_load_all(url: str, labels: int) -> dict[str, float]:
    """Nomarr's old approach: accumulate every prediction per tag key, then percentiles."""
    store = open_url(url)
    store.list_calibrations()
    conn = store._conn  # type: ignore[attr-defined]
    baseline = reset_peak_rss()
    started = time.perf_counter()
    values: dict[str, list[float]] = defaultdict(list)
    for model_key, head_name, label, value in conn.execute(
        "SELECT model_key, head_name, label, value FROM file_tags WHERE nomarr_only = 1 "
        "AND typeof(value) IN ('real', 'integer')"
    ):
        values[f"{model_key}:{head_name}:{label}"].append(value)
    percentiles = {
        key: np.percentile(np.asarray(found), [5, 95], method="inverted_cdf") for key, found in values.items()
    }
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "growth_kib": peak_rss_kib() - baseline,
        "values": sum(len(found) for found in values.values()),
        "labels": len(percentiles),
    }


PHASES = {"histogram": phase_histogram, "load_all": phase_load_all}


def run_child(script: Path, phase: str, url: str, **options: object) -> dict:
    """Run one ``--phase`` of a benchmark script in a fresh process (its own peak RSS) against
    the store at ``url`` and return the JSON its last line prints; ``options`` become
    ``--name value`` arguments."""
    command = [sys.executable, str(script), "--phase", phase, "--db", url]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--repeat", type=int, default=3, help="histogram runs per engine; the fastest is compared"
    )
    add_store_arguments(parser)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.db, args.labels)))
        return

    path = ensure_db(args.db_dir, args.files, args.labels)
    total = args.files * args.labels
    print(f"store: {path} ({path.stat().st_size / 2**20:.0f} MiB), {total:,} values")
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    script = Path(__file__)
    sqlite_url = f"sqlite:///{path}"
    with postgres_url(args) as pg_url:
        engines = {"sqlite": sqlite_url, **({"postgres": pg_url} if pg_url else {})}
        if pg_url:
            fill_postgres(pg_url, args.files, args.labels)
        best = {}
        for engine, url in engines.items():
            runs = [
                run_child(script, "histogram", url, labels=args.labels) for _ in range(max(args.repeat, 1))
            ]
            print(f"{engine} histogram runs: " + ", ".join(f"{run['seconds']:.2f} s" for run in runs))
            best[engine] = min(runs, key=lambda run: run["seconds"])
            assert best[engine]["values"] == total, (engine, best[engine])
    new = best["sqlite"]
    old = run_child(script, "load_all", sqlite_url, labels=args.labels)
    assert old["values"] == total, old
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'approach':<22}{'seconds':>10}{'peak RSS growth':>18}{'one label':>12}")
    rows = [(f"histogram ({engine})", result) for engine, result in best.items()] + [
        ("load-all (sqlite)", old)
    ]
    for name, result in rows:
        one = result.get("one_label_query_seconds")
        print(f"{name:<22}{result['seconds']:>10.2f}{result['growth_kib'] / 1024:>15.1f} MB"
              f"{'' if one is None else f'{one * 1000:>9.0f} ms'}")  # fmt: skip
    print(
        f"ratios: load-all / histogram = {old['seconds'] / new['seconds']:.1f}x time, "
        f"{old['growth_kib'] / max(new['growth_kib'], 1):.0f}x memory"
    )
    goals = {
        "time <= 5 s per 10 M values": new["seconds"] <= 5.0 * total / 10_000_000,
        "RSS growth <= 50 MB": new["growth_kib"] <= 50 * 1024,
        ">= 10x less memory than load-all": old["growth_kib"] >= 10 * new["growth_kib"],
    }
    if "postgres" in best:
        pg = best["postgres"]
        print(f"postgres / sqlite = {pg['seconds'] / new['seconds']:.2f}x time")
        goals["PostgreSQL time <= SQLite time"] = pg["seconds"] <= new["seconds"]
        goals["PostgreSQL RSS growth <= 50 MB"] = pg["growth_kib"] <= 50 * 1024
    for goal, met in goals.items():
        print(f"  [{'x' if met else ' '}] {goal}")


if __name__ == "__main__":
    main()
