"""Calibration generation at library scale: DB histograms vs loading every value.

    .venv/bin/python benchmarks/bench_calibration.py                 # 200k files x 50 labels
    .venv/bin/python benchmarks/bench_calibration.py --files 20000 --labels 10

Fills a SQLite store with ``files x labels`` predictions (cached per size under --db-dir,
reused by bench_recalibration.py), then times, each in a fresh child process:

* ``histogram``: ``calibrate_heads`` over every head (one grouped query per label, p5/p95
  from the bins, states saved);
* ``load_all``: the old approach, every value loaded into Python and ``np.percentile``.

Peak RSS growth is measured inside the child: VmHWM is reset through /proc/self/clear_refs
after imports and the store connection are set up, so the figure is the work's own growth.
Goals: histogram <= 5 s for 10 M values, growth <= 50 MB, >= 10x less memory than load_all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from nomarr_pipeline.calibration.generation import HeadRef, calibrate_heads
from nomarr_pipeline.store import open_store

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


def fill(path: Path, files: int, labels: int, seed: int = 1) -> None:
    """Write files x labels predictions straight through the store's connection (benchmark
    only): file-major order, so the primary-key index grows by appending."""
    store = open_store(f"sqlite:///{path}")
    conn = store._conn  # type: ignore[attr-defined]  # benchmark-only shortcut
    conn.execute("PRAGMA synchronous = OFF")
    rng = np.random.default_rng(seed)
    heads = heads_for(labels)
    pairs = [(head.head_name, label) for head in heads for label in head.labels]
    # Every label its own shape: beta(a, b) with a, b in [0.5, 5].
    shapes = rng.uniform(0.5, 5.0, size=(len(pairs), 2))
    started = time.perf_counter()
    conn.execute("BEGIN")
    for first in range(0, files, FILL_CHUNK_FILES):
        count = min(FILL_CHUNK_FILES, files - first)
        keys = [f"f{index:07d}" for index in range(first, first + count)]
        conn.executemany(
            "INSERT INTO library_files (_key, library_id, path, size, mtime_ns, scanned_at, "
            "analyzed_at, file_tags_pending) VALUES (?, 'lib1', ?, 1, 1, 1, 2, 0)",
            [(key, f"/music/{key}.flac") for key in keys],
        )
        values = np.stack(
            [rng.beta(a, b, count).astype(np.float32) for a, b in shapes], axis=1
        ).astype(float)
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
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    store.close()
    print(f"filled {files} files x {labels} labels in {time.perf_counter() - started:.1f} s")


def ensure_db(db_dir: Path, files: int, labels: int) -> Path:
    path = db_path(db_dir, files, labels)
    marker = path.with_suffix(".complete")
    if not marker.exists():
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        fill(path, files, labels)
        marker.write_text("ok")
    return path


# ---- phases (each run in its own child process) ---------------------------------------------


def phase_histogram(path: Path, labels: int) -> dict[str, float]:
    store = open_store(f"sqlite:///{path}")
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
    store.histogram(head.model_key, head.head_name, head.labels[0], 0.0, 1.0, 10_000)
    return time.perf_counter() - started


def phase_load_all(path: Path, labels: int) -> dict[str, float]:
    """The seed's old approach: accumulate every prediction per tag key, then percentiles."""
    store = open_store(f"sqlite:///{path}")
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
        key: np.percentile(np.asarray(found), [5, 95], method="inverted_cdf")
        for key, found in values.items()
    }
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "growth_kib": peak_rss_kib() - baseline,
        "values": sum(len(found) for found in values.values()),
        "labels": len(percentiles),
    }


PHASES = {"histogram": phase_histogram, "load_all": phase_load_all}


def run_child(script: Path, phase: str, path: Path, **options: object) -> dict:
    """Run one ``--phase`` of a benchmark script in a fresh process (its own peak RSS) and
    return the JSON its last line prints; ``options`` become ``--name value`` arguments."""
    command = [sys.executable, str(script), "--phase", phase, "--db", str(path)]
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
        "--repeat", type=int, default=3, help="histogram runs; the fastest is compared"
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.db, args.labels)))
        return

    path = ensure_db(args.db_dir, args.files, args.labels)
    total = args.files * args.labels
    print(f"store: {path} ({path.stat().st_size / 2**20:.0f} MiB), {total:,} values")
    script = Path(__file__)
    runs = [run_child(script, "histogram", path, labels=args.labels) for _ in range(max(args.repeat, 1))]
    print("histogram runs: " + ", ".join(f"{run['seconds']:.2f} s" for run in runs))
    new = min(runs, key=lambda run: run["seconds"])
    old = run_child(script, "load_all", path, labels=args.labels)
    assert new["values"] == old["values"] == total, (new, old)
    print(f"{'approach':<12}{'seconds':>10}{'peak RSS growth':>18}")
    for name, result in (("histogram", new), ("load-all", old)):
        print(f"{name:<12}{result['seconds']:>10.2f}{result['growth_kib'] / 1024:>15.1f} MB")
    print(
        f"ratios: load-all / histogram = {old['seconds'] / new['seconds']:.1f}x time, "
        f"{old['growth_kib'] / max(new['growth_kib'], 1):.0f}x memory"
    )
    print(
        f"one label's histogram query (store.histogram, warm): "
        f"{min(run['one_label_query_seconds'] for run in runs) * 1000:.0f} ms for "
        f"{args.files:,} values; x{args.labels} labels = "
        f"{min(run['one_label_query_seconds'] for run in runs) * args.labels:.2f} s"
    )
    goals = {
        "time <= 5 s per 10 M values": new["seconds"] <= 5.0 * total / 10_000_000,
        "RSS growth <= 50 MB": new["growth_kib"] <= 50 * 1024,
        ">= 10x less memory than load-all": old["growth_kib"] >= 10 * new["growth_kib"],
    }
    for goal, met in goals.items():
        print(f"  [{'x' if met else ' '}] {goal}")


if __name__ == "__main__":
    main()
