"""A 400-label head (discogs-effnet-bs64's styles) against the same values in two-label heads.

    .venv/bin/python benchmarks/bench_wide_head.py                      # 10,000 files x 400 labels
    .venv/bin/python benchmarks/bench_wide_head.py --files 1000 --tag-files 15 --repeats 2
    .venv/bin/python benchmarks/bench_wide_head.py --tags-only --tag-files 90    # tag writing only

The same predictions, grouped two ways: 200 two-label heads (bench_calibration.py's store,
cached under --db-dir) and one head of 400 labels (a copy of that store whose rows are
renamed to one head, as an auto-tagging model stores them). Timed, median of --repeats:

* ``calibration``: ``calibrate_heads`` over each grouping (one histogram query per label
  either way, one transaction per head);
* ``metadata``: what the ``calibration_state`` asset attaches to each partition
  (``assets.calibration._head_metadata``: the label table) plus ``calibration_history``'s
  read of each head's recent snapshots (``recent_history``, one query per head), for the
  wide head and for all 200 narrow heads; and the size of the wide head's label table
  (its JSON, as the metadata is stored). Histogram images
  are left out of both: the asset draws them only for heads of up to 4 labels (about 0.2 s
  each), so the 200 narrow heads would be timed drawing 400 pictures;
* ``tag writing``: three full-mode tag sets, selected by ``select_tags`` from stored
  predictions: bench_tag_writing.py's 8 mood heads (36 keys); those plus the 400 styles with
  every label written (``max_labels=0``, as before issue 16: 836 keys); and plus the styles'
  strongest ``DEFAULT_MAX_LABELS`` (the default now). Each is written in place on fresh mp3,
  flac and m4a copies (``bench_tag_writing.bare_write``) and read back, and written by the
  whole ``write_pending_tags`` batch (files/s).

Goals: per value, the wide head's calibration within 1.25x of the narrow heads'; its
partition metadata under 0.5 s. Tag writing has no goal: it measures what a wide head costs
per file with every label and now (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_calibration  # a sibling script
import bench_tag_writing
from dagster._serdes import serialize_value

from nomarr_pipeline.calibration.generation import calibrate_head
from nomarr_pipeline.calibration.state import calibration_key
from nomarr_pipeline.defs.assets.calibration import RECENT_SNAPSHOTS, _head_metadata
from nomarr_pipeline.store import open_store
from nomarr_pipeline.tagging.batch import DEFAULT_WRITERS
from nomarr_pipeline.tagging.formats import OpenedAudio
from nomarr_pipeline.tagging.selection import DEFAULT_MAX_LABELS, TagOptions, select_tags
from nomarr_pipeline_tests.calibration.heads import HeadRef

LABELS = 400
WIDE_MODEL = "effnet-discogs-effnet-bs64-1"
WIDE_HEAD = "discogs-effnet-bs64"


def wide_store(narrow: Path) -> Path:
    """A copy of the narrow store with every row moved to one 400-label head."""
    wide = narrow.with_name(narrow.stem + "-wide.sqlite3")
    marker = wide.with_suffix(".complete")
    if not marker.exists():
        shutil.copyfile(narrow, wide)
        store = open_store(f"sqlite:///{wide}")
        conn = store._conn  # type: ignore[attr-defined]  # benchmark-only shortcut, as bench_calibration
        conn.execute("UPDATE file_tags SET model_key = ?, head_name = ?", (WIDE_MODEL, WIDE_HEAD))
        conn.execute("DELETE FROM calibration_state")
        conn.execute("DELETE FROM calibration_history")
        conn.commit()
        conn.execute("ANALYZE")
        store.close()
        marker.write_text("ok")
    return wide


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate_and_describe(url: str, heads: list[HeadRef], repeats: int) -> tuple[float, float, int]:
    """Median seconds of calibrating ``heads`` and of building their partition metadata, and
    the largest label table (characters)."""
    store = open_store(url)
    try:
        reports: list = []

        def calibrate() -> None:
            reports.clear()
            for head in heads:
                reports.append(calibrate_head(store, head))

        calibration = median_seconds(calibrate, repeats)
        table = 0

        def describe() -> None:
            nonlocal table
            for head, (report, histograms) in zip(heads, reports, strict=True):
                meta = _head_metadata(report, histograms)
                table = max(table, len(serialize_value(meta["labels"])))
                store.recent_history(
                    [calibration_key(head.model_key, head.head_name, label) for label in head.labels],
                    per_key=RECENT_SNAPSHOTS,
                )

        metadata = median_seconds(describe, repeats)
        return calibration, metadata, table
    finally:
        store.close()


def wide_predictions(file_id: str) -> list[dict[str, Any]]:
    """bench_tag_writing's 8 mood heads plus the 400 styles, as the store holds them."""
    styles = [
        {"_key": f"{file_id}|{WIDE_MODEL}|{WIDE_HEAD}|{index}", "file_id": file_id, "model_key": WIDE_MODEL,
         "head_name": WIDE_HEAD, "label": f"Genre {index // 25:02d}---Style {index:03d}",
         "value": (index % 97) / 97, "std": 0.0, "calibrated_value": ((index * 37) % 101) / 100,
         "nomarr_only": True, "tagger_version": bench_tag_writing.VERSION}
        for index in range(LABELS)
    ]  # fmt: skip
    return bench_tag_writing.predictions_for(file_id) + styles


def tag_sets() -> dict[str, dict[str, str | list[str]]]:
    """The narrow set, and the wide one as the selection makes it with every label and now."""

    def selected(max_labels: int) -> dict[str, str | list[str]]:
        return select_tags(mode="full", has_calibration=True, write_raw_scores=True,
                           predictions=wide_predictions("f"), mood_tiers=bench_tag_writing.TIERS,
                           tagger_version=bench_tag_writing.VERSION,
                           options=TagOptions(mood_tier=None, score_heads="all",
                                              max_labels=max_labels))  # fmt: skip

    return {
        "8 mood heads": bench_tag_writing.tag_set(),
        "+ 400 styles, every label (before)": selected(0),
        f"+ 400 styles, strongest {DEFAULT_MAX_LABELS} (now)": selected(DEFAULT_MAX_LABELS),
    }


def tag_writing(files: int, repeats: int, workdir: Path) -> dict[str, tuple[float, float, int, float]]:
    """name -> (write ms per file, read ms per file, keys, pipeline files/s) for each tag set."""
    (workdir / "sources").mkdir(parents=True)
    sources = bench_tag_writing.make_sources(workdir / "sources", seconds=30)
    results = {}
    for name, tags in tag_sets().items():
        writes, reads, rates = [], [], []
        predictions = bench_tag_writing.predictions_for if name == "8 mood heads" else wide_predictions
        max_labels = 0 if "every label" in name else DEFAULT_MAX_LABELS
        for _ in range(repeats):
            copies = bench_tag_writing.fresh_copies(sources, workdir / "copies", files)
            started = time.perf_counter()
            for path in copies:
                bench_tag_writing.bare_write(path, tags)
            writes.append((time.perf_counter() - started) * 1000 / files)
            started = time.perf_counter()
            for path in copies:
                if len(OpenedAudio(path).state().nom_tags) != len(tags):
                    raise RuntimeError(f"{path} did not read back its {len(tags)} keys")
            reads.append((time.perf_counter() - started) * 1000 / files)
            copies = bench_tag_writing.fresh_copies(sources, workdir / "pipeline", files)
            seconds = bench_tag_writing.pipeline_seconds(
                copies, workdir / "pipeline", DEFAULT_WRITERS, predictions, max_labels
            )
            rates.append(files / seconds)
        medians = [statistics.median(values) for values in (writes, reads, rates)]
        results[name] = (medians[0], medians[1], len(tags), medians[2])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="files in the stores")
    parser.add_argument("--tag-files", type=int, default=30, help="files per tag-writing pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--tags-only", action="store_true", help="only the tag-writing part")
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)

    if not args.tags_only:
        calibration_and_metadata(args)
    with tempfile.TemporaryDirectory(prefix="nomarr-wide-") as tmp:
        writing = tag_writing(args.tag_files, args.repeats, Path(tmp))
    print(f"tag writing, {args.tag_files} files (mp3/flac/m4a) per pass, medians of {args.repeats}:")
    for name, (write_ms, read_ms, count, rate) in writing.items():
        print(f"  {name:<38} {count:4d} keys: write {write_ms:6.1f} ms/file, read {read_ms:6.1f} ms/file; "
              f"pipeline {rate:6.1f} files/s")  # fmt: skip
    (_, narrow), (_, before), (_, now) = writing.items()
    print(
        f"  the wide head costs {before[0] - narrow[0]:.1f} ms/file to write with every label, "
        f"{now[0] - narrow[0]:.1f} ms/file now; pipeline now / before x{now[3] / before[3]:.2f}"
    )
    print(f"load {os.getloadavg()[0]:.2f}")


def calibration_and_metadata(args: argparse.Namespace) -> None:
    print(f"{args.files:,} files x {LABELS} labels = {args.files * LABELS:,} values per grouping", flush=True)
    narrow_path = bench_calibration.ensure_db(args.db_dir, args.files, LABELS)
    wide_path = wide_store(narrow_path)
    narrow_heads = bench_calibration.heads_for(LABELS)
    labels = tuple(label for head in narrow_heads for label in head.labels)
    wide_heads = [HeadRef(WIDE_MODEL, WIDE_HEAD, 1, labels)]

    narrow = calibrate_and_describe(f"sqlite:///{narrow_path}", narrow_heads, args.repeats)
    wide = calibrate_and_describe(f"sqlite:///{wide_path}", wide_heads, args.repeats)
    print(f"{'':<34}{'200 heads x 2':>14}{'1 head x 400':>14}{'ratio':>8}")
    for index, name in enumerate(("calibration (s)", "partition metadata (s)")):
        print(f"{name:<34}{narrow[index]:>14.3f}{wide[index]:>14.3f}{wide[index] / narrow[index]:>8.2f}")
    print(f"label table of the wide head: {wide[2]:,} characters (one metadata entry)")
    goals = {
        "calibration within 1.25x per value": wide[0] <= 1.25 * narrow[0],
        "wide head's partition metadata under 0.5 s": wide[1] <= 0.5,
    }
    for goal, met in goals.items():
        print(f"  [{'x' if met else ' '}] {goal}")


if __name__ == "__main__":
    main()
