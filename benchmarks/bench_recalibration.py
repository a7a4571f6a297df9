"""Recalibration at library scale: 200k files x 50 labels (10 M stored values).

    .venv/bin/python benchmarks/bench_recalibration.py
    .venv/bin/python benchmarks/bench_recalibration.py --files 20000 --batch-size 2000
    NOMARR_PG_PASSWORD=... .venv/bin/python benchmarks/bench_recalibration.py \
        --store-url postgresql://user@host:5432/bench

Uses bench_calibration.py's cached SQLite store (filled on first use) and the same values in
PostgreSQL (--store-url, or a throwaway server; --no-postgres skips it); on each engine it
calibrates every head, then times ``recalibrate`` of every file in a fresh child process with
its peak RSS growth, for each case:

* ``new``: a calibration the store has not applied yet comes into force (every value between
  p5 and p95 gets a new calibrated value) — what a recomputed calibration costs;
* ``same``: every hash cleared, calibration unchanged (no stored value changes).

On PostgreSQL what the previous run left is vacuumed before each timed run (autovacuum would
otherwise clean it inside the next one). One batch is then broken down by store call, so a
slow query is named. Goals: <= 30 s for 10 M values; PostgreSQL <= SQLite in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_calibration import (
    add_store_arguments,
    ensure_db,
    fill_postgres,
    heads_for,
    open_url,
    peak_rss_kib,
    postgres_url,
    reset_peak_rss,
    run_child,
)

from nomarr_pipeline.calibration.generation import calibrate_heads
from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.calibration.tiers import TierConfig, mood_tiers_of_rows

# Each timed run gets a calibration the store has not applied yet, widened by this fraction of
# its p5..p95 range on each side: every value between the percentiles (about 90 % of them)
# gets a new calibrated value, as when a recomputed calibration comes into force. The rest
# stay clamped at 0 or 1 (rows whose value does not change are not rewritten).
NEW_CALIBRATION_WIDENING = 0.001
CASES = {
    "new": "new calibration in force (every value between p5 and p95 changes)",
    "same": "hashes reset, same calibration (no value changes)",
}


def make_stale(store, case: str) -> None:
    """Every file needs recalibration: a new calibration in force (``new``), or the same one
    with every hash cleared (``same``, as ``reset_calibration_hashes`` after a migration)."""
    if case == "same":
        store.reset_calibration_hashes()
        return
    states = store.list_calibrations()
    for state in states:
        width = state["p95"] - state["p5"]
        state["p5"] -= NEW_CALIBRATION_WIDENING * width
        state["p95"] += NEW_CALIBRATION_WIDENING * width
    store.save_calibrations(states, [])  # benchmark only: no history snapshot


def phase_recalibrate(url: str, batch_size: int, readers: int = 0, case: str = "new") -> dict[str, float]:
    store = open_url(url)
    make_stale(store, case)
    store.list_calibrations()  # connection and schema before the baseline
    baseline = reset_peak_rss()
    started = time.perf_counter()
    report = recalibrate(
        store, tier_config=TierConfig(exclude_heads=()), batch_size=batch_size, readers=readers
    )
    assert report.voided == 0
    return {
        "seconds": time.perf_counter() - started,
        "growth_kib": peak_rss_kib() - baseline,
        # The reader processes have ended by now: the peak RSS of the largest one.
        "reader_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "recalibrated": report.recalibrated,
        "remaining": report.remaining,
        "readers": report.readers,
        "writers": report.writers,
    }


def phase_breakdown(url: str, batch_size: int, readers: int = 0, case: str = "new") -> dict[str, float]:
    """One batch, step by step, in this one process (the steps of a recalibration batch:
    claim and finish in the writer, tier inputs and tiers in a reader)."""
    store = open_url(url)
    make_stale(store, case)
    expected = expected_calibration_hash(store.list_calibrations())
    timings: dict[str, float] = {}

    def timed(name: str, call):
        started = time.perf_counter()
        result = call()
        timings[name] = time.perf_counter() - started
        return result

    ids = timed("claim_files_for_recalibration (writer)", lambda: store.claim_files_for_recalibration(
        expected, "bench:", "bench:1", batch_size))  # fmt: skip
    rows = timed("tier_inputs (reader)", lambda: store.tier_inputs(ids))

    def tiers():
        grouped = defaultdict(list)
        for row in rows:
            grouped[row[0]].append(row)
        config = TierConfig(exclude_heads=())
        return {key: mood_tiers_of_rows(grouped[key], config) for key in ids}

    by_file = timed("compute_mood_tiers (reader)", tiers)
    timed("finish_claimed_recalibration (writer)", lambda: store.finish_claimed_recalibration(
        "bench:1", expected, by_file))  # fmt: skip
    timed("count_files_needing_recalibration", lambda: store.count_files_needing_recalibration(
        expected))  # fmt: skip
    return timings


SCRIPT = Path(__file__)
PHASES = {"recalibrate": phase_recalibrate, "breakdown": phase_breakdown}


def vacuum_postgres(url: str) -> float:
    """VACUUM what the previous run left (benchmark only), so that autovacuum's clean-up of
    one run does not run inside the next timed one; returns its seconds."""
    store = open_url(url)
    conn = store._connection()  # type: ignore[attr-defined]  # benchmark-only shortcut
    started = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) library_files, file_tags")
    store.close()
    return time.perf_counter() - started


def timed_run(engine: str, url: str, args: argparse.Namespace, case: str, readers: int) -> dict[str, float]:
    if engine == "postgres":
        print(f"[{engine}] VACUUM before the run: {vacuum_postgres(url):.1f} s (not timed)")
    result = run_child(SCRIPT, "recalibrate", url, batch_size=args.batch_size, readers=readers, case=case)
    assert result["recalibrated"] == args.files and result["remaining"] == 0, result
    print(
        f"[{engine}] {CASES[case]}: {result['seconds']:.2f} s for {result['recalibrated']:,} files "
        f"(batch {args.batch_size}, {result['readers']} reader / {result['writers']} writer "
        f"processes), peak RSS growth {result['growth_kib'] / 1024:.1f} MB in the main process"
        + (f", peak RSS {result['reader_peak_kib'] / 1024:.1f} MB a reader" if result["readers"] > 1 else "")
    )
    return result


def run_engine(engine: str, url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Calibrate, then time each case (``--repeat`` runs, the median kept)."""
    store = open_url(url)
    started = time.perf_counter()
    calibrate_heads(store, heads_for(args.labels), stop_on_error=True)
    print(f"[{engine}] calibrated {args.labels} labels in {time.perf_counter() - started:.2f} s")
    store.close()
    results = {}
    for case in args.cases:
        runs = [timed_run(engine, url, args, case, args.readers) for _ in range(max(args.repeat, 1))]
        results[case] = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
    if args.baseline:
        inline = timed_run(engine, url, args, "new", readers=1)
        speed_up = inline["seconds"] / results["new"]["seconds"] if "new" in results else float("nan")
        print(f"[{engine}] baseline readers=1 (inline): speed-up x{speed_up:.2f}")
    breakdown = run_child(SCRIPT, "breakdown", url, batch_size=args.batch_size, case="new")
    batches = -(-args.files // args.batch_size)
    print(f"[{engine}] one batch of {args.batch_size} files, new calibration ({batches} batches in the run):")
    for step, seconds in breakdown.items():
        scale = "" if step.startswith("count") else f"  (x{batches} = {seconds * batches:.1f} s)"
        print(f"  {step:<36}{seconds * 1000:>9.1f} ms{scale}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--readers", type=int, default=0, help="0: automatic (the pipeline's default)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time readers=1 (tiers computed inline, one process)")  # fmt: skip
    parser.add_argument("--cases", type=lambda text: text.split(","), default=list(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default: both)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs per case and engine; the median is kept")
    add_store_arguments(parser)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=sorted(CASES), default="new", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.db, args.batch_size, args.readers, args.case)))
        return

    path = ensure_db(args.db_dir, args.files, args.labels)
    total = args.files * args.labels
    print(f"{args.files:,} files needing recalibration, {total:,} values")
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {}
    with postgres_url(args) as pg_url:
        if pg_url:
            fill_postgres(pg_url, args.files, args.labels)
        engines = {"sqlite": f"sqlite:///{path}", **({"postgres": pg_url} if pg_url else {})}
        for engine, url in engines.items():
            results[engine] = run_engine(engine, url, args)
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    goal = 30.0 * total / 10_000_000
    for case in args.cases:
        print(f"{CASES[case]}:")
        for engine, result in results.items():
            met = "x" if result[case]["seconds"] <= goal else " "
            seconds = result[case]["seconds"]
            print(f"  [{met}] {engine}: {seconds:.2f} s, <= {goal:.1f} s for {total:,} values")
        if "postgres" in results:
            ratio = results["postgres"][case]["seconds"] / results["sqlite"][case]["seconds"]
            print(f"  [{'x' if ratio <= 1 else ' '}] PostgreSQL <= SQLite (postgres / sqlite = {ratio:.2f}x)")

if __name__ == "__main__":
    main()
