"""Benchmark: the pipeline's batch of atomic, verified tag writes, against a bare in-place loop.

Both write the same ``nom:`` tag set (20 keys: tiers, version, raw and calibrated scores of
8 mood heads' positive labels) to fresh copies of the same generated files
(mp3, flac, m4a in turn). The bare loop is :func:`bare_write` on each file: one mutagen open +
save, no temp copy, no verification, no fsync. The pipeline is ``batch.write_pending_tags`` on a
fresh SQLite store holding those files' predictions and mood tiers (the sweep of abandoned
temps, select, prepare — copy, write, verify, fsync — record the written stats, rename,
record), once with ``writers=1`` and once with the default (threads). Floor: ≥ 300 files/s with
the default; the ratio to the bare loop is for information.

``--sweep-files N`` also times the sweep of abandoned temp copies over a library of N (empty)
files, 100 per folder, against the scanner's full walk of the same tree (a stat per file).

``--verify`` times ``scan --verify``'s check instead (``tagging.verify``): the files the pipeline
has just written (so in the page cache) read back and compared with the store, per 1,000 files.

    .venv/bin/python benchmarks/bench_tag_writing.py [--files 300] [--repeats 3] [--sweep-files 100000]
    .venv/bin/python benchmarks/bench_tag_writing.py --verify [--files 1000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nomarr_pipeline.library.walk import walk_library
from nomarr_pipeline.store import open_store
from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.batch import DEFAULT_WRITERS, write_pending_tags
from nomarr_pipeline.tagging.formats import OpenedAudio, normalize_tags
from nomarr_pipeline.tagging.selection import DEFAULT_MAX_LABELS, TagOptions
from nomarr_pipeline.tagging.temps import Owner, remove_abandoned_temps, temp_prefix, this_host
from nomarr_pipeline.tagging.verify import VerifyReport, verify_written_tags

FLOOR_FILES_PER_S = 300
ENCODERS = {"mp3": "libmp3lame", "flac": "flac", "m4a": "aac"}
MODEL = "effnet-discogs-effnet-1"
VERSION = "nomarr-bench-1"
TIERS = {"mood-strict": ["happy"], "mood-regular": ["happy", "party"],
         "mood-loose": ["happy", "party", "not relaxed"]}  # fmt: skip
MOOD_HEADS = ["mood_happy", "mood_sad", "mood_party", "mood_relaxed", "mood_aggressive", "mood_acoustic",
              "mood_electronic", "danceability"]  # fmt: skip


def score_rows() -> list[tuple[str, str, float]]:
    rows = []
    for index, head in enumerate(MOOD_HEADS):
        label = head.removeprefix("mood_")
        rows += [(head, label, 0.1 + index / 10), (head, f"non_{label}", 0.9 - index / 10)]
    return rows


def tag_set() -> dict[str, str | list[str]]:
    """What the batch selects from :func:`predictions_for`: tiers, raw + calibrated, version."""
    tags: dict[str, str | list[str]] = {f"nom:{tier}": terms for tier, terms in TIERS.items()}
    tags[keys.VERSION] = VERSION
    for head, label, value in score_rows():
        if label.startswith("non_"):
            continue  # of a two-class head the pipeline writes the positive label only
        tags[keys.score_keys("raw", MODEL, head, (label,))[label]] = keys.format_score(value)
        tags[keys.score_keys("cal", MODEL, head, (label,))[label]] = keys.format_score(value / 2)
    return tags


def bare_write(path: Path, tags: dict[str, str | list[str]]) -> None:
    """The tags saved into the file in place: what a plain mutagen script does."""
    opened = OpenedAudio(path)
    opened.save(normalize_tags(tags), opened.state(), into=str(path))


def predictions_for(file_id: str) -> list[dict[str, Any]]:
    return [
        {"_key": f"{file_id}|{MODEL}|{head}|{label}", "file_id": file_id, "model_key": MODEL,
         "head_name": head, "label": label, "value": value, "std": 0.01, "calibrated_value": value / 2,
         "nomarr_only": True, "tagger_version": VERSION}
        for head, label, value in score_rows()
    ]  # fmt: skip


def make_sources(folder: Path, seconds: float) -> list[Path]:
    sources = []
    for extension, encoder in ENCODERS.items():
        target = folder / f"source.{extension}"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
             f"sine=frequency=440:duration={seconds}", "-ac", "2", "-c:a", encoder,
             "-metadata", "title=Bench", str(target)],
            check=True,
        )  # fmt: skip
        sources.append(target)
    return sources


def fresh_copies(sources: list[Path], folder: Path, count: int) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    copies = []
    for index, source in zip(range(count), itertools.cycle(sources), strict=False):
        copies.append(folder / f"{index:05d}{source.suffix}")
        shutil.copyfile(source, copies[-1])
    os.sync()  # no writeback of the copies lands in the timed section's fsyncs
    return copies


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def pipeline_seconds(
    files: list[Path],
    root: Path,
    writers: int,
    predictions: Callable[[str], list[dict[str, Any]]] = predictions_for,
    max_labels: int = DEFAULT_MAX_LABELS,
) -> float:
    db_path = root.parent / "bench.sqlite3"
    db_path.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db_path}")
    try:
        library = store.ensure_library({"_key": "bench", "name": "bench", "root_path": str(root),
                                        "file_write_mode": "full", "write_raw_scores": True})  # fmt: skip
        ids = [f"{index:05d}" for index in range(len(files))]
        stats = [os.stat(path) for path in files]
        store.upsert_files([{"_key": key, "library_id": "bench", "path": str(path), "size": info.st_size,
                             "mtime_ns": info.st_mtime_ns, "scanned_at": 1}
                            for key, path, info in zip(ids, files, stats, strict=True)])  # fmt: skip
        store.write_predictions([doc for key in ids for doc in predictions(key)])
        store.upsert_files([{"_key": key, "calibration_hash": "h", "mood_tiers": TIERS,
                                     "file_tags_pending": True} for key in ids])  # fmt: skip
        reports = []

        def batch() -> None:
            roots = [root]
            reports.append(write_pending_tags(store, library=library, library_roots=roots,
                                              has_calibration=True, writers=writers,
                                              options=TagOptions(mood_tier=None, score_heads="all",
                                                                 max_labels=max_labels)))  # fmt: skip

        seconds = timed(batch)
    finally:
        store.close()
    assert (reports[0].written, reports[0].failed) == (len(files), 0), reports[0].summary()
    if predictions is predictions_for:
        assert OpenedAudio(files[0]).state().nom_tags == normalize_tags(tag_set())
    return seconds


def bench_writes(workdir: Path, files: int, repeats: int, seconds: float) -> None:
    sources = make_sources(workdir, seconds)
    tags, default = tag_set(), DEFAULT_WRITERS
    sizes = ", ".join(f"{p.suffix[1:]} {p.stat().st_size // 1024} KB" for p in sources)
    print(f"{files} files per run ({sizes}), {len(tags)} nom: keys, {repeats} repetitions, "
          f"{os.cpu_count()} CPUs, default writers={default}")  # fmt: skip
    rates: dict[str, list[float]] = {}
    for _ in range(repeats):
        copies = fresh_copies(sources, workdir / "bare", files)
        rates.setdefault("bare in-place loop", []).append(
            files / timed(lambda: [bare_write(path, tags) for path in copies])  # noqa: B023
        )
        for writers in dict.fromkeys([1, default]):
            copies = fresh_copies(sources, workdir / "pipeline", files)
            name = "pipeline, default writers" if writers == default else f"pipeline, writers={writers}"
            rates.setdefault(name, []).append(files / pipeline_seconds(copies, workdir / "pipeline", writers))
    bare = rates["bare in-place loop"]
    for name, values in rates.items():
        runs = ", ".join(f"{value:.0f}" for value in values)
        line = f"{name:>28}: median {statistics.median(values):7.1f} files/s (runs: {runs})"
        if name != "bare in-place loop":
            # Paired per repetition (same moment, same load), then the median.
            ratio = statistics.median(v / b for v, b in zip(values, bare, strict=True))
            line += f", {ratio:.2f} x bare"
        print(line)
    default_rate = statistics.median(rates["pipeline, default writers"])
    verdict = "meets" if default_rate >= FLOOR_FILES_PER_S else "BELOW"
    print(f"floor {FLOOR_FILES_PER_S} files/s with the default settings: {verdict} ({default_rate:.0f})")


def bench_verify(workdir: Path, files: int, repeats: int, seconds: float) -> None:
    copies = fresh_copies(make_sources(workdir, seconds), workdir / "verify", files)
    write_seconds = pipeline_seconds(copies, workdir / "verify", DEFAULT_WRITERS)
    store = open_store(f"sqlite:///{workdir / 'bench.sqlite3'}")
    try:
        library = store.get_library("bench")
        assert library is not None
        reports: list[VerifyReport] = []
        # The options pipeline_seconds wrote with: verify compares against what they give.
        options = TagOptions(mood_tier=None, score_heads="all", max_labels=DEFAULT_MAX_LABELS)
        runs = [timed(lambda: reports.append(verify_written_tags(store, library, has_calibration=True,
                                                                 options=options)))
                for _ in range(repeats)]
    finally:
        store.close()
    assert reports[-1] == VerifyReport(checked=files, queued=0), reports[-1]
    per_1000 = statistics.median(runs) * 1000 / files
    shown = ", ".join(f"{run * 1000 / files:.2f}" for run in runs)
    print(f"verify {files} written files (mp3, flac, m4a): median {per_1000:.2f} s per 1,000 files "
          f"(runs: {shown}); writing them took {write_seconds * 1000 / files:.2f} s per 1,000")


def bench_sweep(workdir: Path, files: int, repeats: int) -> None:
    root = workdir / "sweep"
    for index in range(files):
        folder = root / f"artist{index // 1000:03d}" / f"album{index // 100:04d}"
        if index % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"{index:06d}.flac").touch()
    dead = Owner(this_host(), 2**22 + 1, 1)  # above the default pid_max: never a live process
    sweep, walk = [], []
    for _ in range(repeats):
        for index in range(0, files, max(1, files // 5)):  # five abandoned temps to find
            folder = root / f"artist{index // 1000:03d}" / f"album{index // 100:04d}"
            (folder / f"{temp_prefix(Path(f'{index:06d}.flac'), dead)}abcdefgh.flac").touch()
        sweep.append(timed(lambda: remove_abandoned_temps([root])))
        walk.append(timed(lambda: walk_library(str(root), {}, full=True)))
    median_sweep, median_walk = statistics.median(sweep), statistics.median(walk)
    runs = ", ".join(f"{seconds:.3f}" for seconds in sweep)
    print(f"sweep of abandoned temps over {files} files in {files // 100} folders: median "
          f"{median_sweep:.3f} s (runs: {runs}); the scanner's full walk (a stat per file): "
          f"{median_walk:.3f} s; ratio {median_sweep / median_walk:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated track")
    parser.add_argument("--sweep-files", type=int, default=0, help="also time the temp sweep over N files")
    parser.add_argument("--verify", action="store_true", help="time reading written tags back instead")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nomarr-bench-"))
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    try:
        if args.verify:
            bench_verify(workdir, args.files, args.repeats, args.seconds)
        else:
            bench_writes(workdir, args.files, args.repeats, args.seconds)
        if args.sweep_files:
            bench_sweep(workdir, args.sweep_files, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
