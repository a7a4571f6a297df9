"""Benchmark: the pipeline's batch of atomic, verified tag writes against a bare in-place loop.

Both write the same ``nom:`` tag set (36 keys) to fresh copies of the same generated files
(mp3, flac, m4a in turn). The bare loop is ``formats.write_nom_tags`` on each file, one after
the other: one mutagen open + save, no temp copy, no verification, no fsync. The pipeline is
``batch.write_pending_tags`` on a fresh SQLite store holding those files' predictions and mood
tiers: page the pending files, select their tags, write each file through every step of
``tagging.atomic`` (root and change checks, read, temp copy, write, re-open and verify — a
chunk of files at a time — then fsync, re-check and replace each), record the results — with
``writers=1`` (one file after the other, in this process) and with the default writer count
(one per CPU, at most 4: this process and ``writers - 1`` worker processes, whose start-up is
inside the timing). Goal: pipeline files/s ≥ 0.5 × bare files/s.

``--engines`` also times the bare write step (``write_file_tags`` jobs, no store) inline, on
threads and on processes, which is how the pool kind was chosen.

``--workdir`` puts the files on another filesystem; the script prints which filesystem holds
them (and, for ext4, whether it has a journal), because that moves the pipeline's figures and
not the bare loop's (docs/BENCHMARKS.md, "Where the gap is").

    .venv/bin/python benchmarks/bench_tag_writing.py [--files 300] [--repeats 3] [--engines] [--workdir DIR]
        [--per-folder N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nomarr_pipeline.store import open_store
from nomarr_pipeline.tagging import keys, parallel
from nomarr_pipeline.tagging.batch import write_pending_tags
from nomarr_pipeline.tagging.formats import read_nom_tags, write_nom_tags
from nomarr_pipeline.tagging.parallel import TagWriters, WriteJob

ENCODERS = {"mp3": "libmp3lame", "flac": "flac", "m4a": "aac"}
MODEL = "effnet-discogs-effnet-1"
VERSION = "nomarr-bench-1"
TIERS = {
    "mood-strict": ["happy"],
    "mood-regular": ["happy", "party"],
    "mood-loose": ["happy", "party", "not relaxed"],
}
MOOD_HEADS = ["mood_happy", "mood_sad", "mood_party", "mood_relaxed", "mood_aggressive", "mood_acoustic",
              "mood_electronic", "danceability"]  # fmt: skip


def tag_set() -> dict[str, str | list[str]]:
    """A full-mode tag set of realistic size: 8 binary heads, raw + calibrated, tiers, version."""
    tags: dict[str, str | list[str]] = {
        keys.MOOD_STRICT: ["happy"],
        keys.MOOD_REGULAR: ["happy", "party"],
        keys.MOOD_LOOSE: ["happy", "party", "not relaxed"],
        keys.VERSION: VERSION,
    }
    for head, variant, value in score_rows():
        tags[keys.raw_score_key(MODEL, head, variant)] = keys.format_score(value)
        tags[keys.calibrated_score_key(MODEL, head, variant)] = keys.format_score(value / 2)
    return tags


def score_rows() -> list[tuple[str, str, float]]:
    rows = []
    for index, head in enumerate(MOOD_HEADS):
        label = head.removeprefix("mood_")
        rows += [(head, label, 0.1 + index / 10), (head, f"non_{label}", 0.9 - index / 10)]
    return rows


def predictions_for(file_id: str) -> list[dict[str, Any]]:
    """The stored predictions from which the batch selects exactly :func:`tag_set`."""
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
             "-metadata", "title=Bench", "-metadata", "artist=Bench Artist", str(target)],
            check=True,
        )  # fmt: skip
        sources.append(target)
    return sources


def fresh_copies(sources: list[Path], folder: Path, count: int, per_folder: int = 0) -> list[Path]:
    """``count`` copies of ``sources`` in ``folder``, or in album folders of ``per_folder``."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    copies = []
    for index, source in zip(range(count), itertools.cycle(sources), strict=False):
        album = folder / f"album{index // per_folder:04d}" if per_folder else folder
        album.mkdir(exist_ok=True)
        target = album / f"{index:05d}{source.suffix}"
        shutil.copyfile(source, target)
        copies.append(target)
    # Every timed section starts without dirty pages: otherwise the writeback of these copies
    # (and of the previous section's writes) lands in the next section's fsyncs and timing.
    os.sync()
    return copies


def filesystem_of(path: Path) -> str:
    """The filesystem holding ``path`` as "type on device" (Linux' mount table), and for ext4
    whether it keeps a journal: without one, the kernel's inode allocator steps over every
    inode freed in the last minute, so each temp copy costs the pipeline more than on a
    journaling filesystem (docs/BENCHMARKS.md, "Where the gap is")."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown (no /proc/self/mounts)"
    real = os.path.join(os.path.realpath(path), "")
    best: tuple[str, str, str] | None = None
    for line in mounts:
        device, mount_point, fs_type = line.split()[:3]
        mount_point = mount_point.replace("\\040", " ")
        longer = best is None or len(mount_point) > len(best[1])
        if longer and real.startswith(os.path.join(mount_point, "")):
            best = (device, mount_point, fs_type)
    if best is None:
        return "unknown"
    device, mount_point, fs_type = best
    described = f"{fs_type} on {device} (mounted at {mount_point})"
    if fs_type == "ext4":
        # jbd2 names a journal after the kernel's block device name (vda, dm-0, ...), which
        # the device path in the mount table need not show.
        device_id = os.stat(path).st_dev
        block = Path(f"/sys/dev/block/{os.major(device_id)}:{os.minor(device_id)}")
        if block.exists():
            has_journal = Path(f"/proc/fs/jbd2/{block.resolve().name}-8").exists()
            described += ", with a journal" if has_journal else ", without a journal"
    return described


class Clock:
    """Wall time and CPU time (this process and its finished children, i.e. the writer
    processes once the pool is shut down) of a block; CPU per file does not depend on how
    busy the shared machine is, so it shows what two cores can do at best."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime


Measure = tuple[float, float]  # (files per second, CPU ms per file)


def timed(files: list[Path], write_one: Callable[[Path], None]) -> Measure:
    """Files per second and CPU ms per file of ``write_one`` over ``files``."""
    with Clock() as clock:
        for path in files:
            write_one(path)
    return len(files) / clock.wall, 1000 * clock.cpu / len(files)


def timed_batch(files: list[Path], root: Path, writers: int) -> Measure:
    """Files per second of ``write_pending_tags`` over ``files``, registered in a fresh store."""
    db_path = root.parent / f"{root.name}.db"
    db_path.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db_path}")
    try:
        library = store.ensure_library({"_key": "bench", "name": "bench", "root_path": str(root),
                                        "auto_write_tags": False, "file_write_mode": "full",
                                        "write_raw_scores": False})  # fmt: skip
        file_ids = [f"{index:05d}" for index in range(len(files))]
        stats = [os.stat(path) for path in files]
        store.upsert_files([{"_key": key, "library_id": "bench", "path": str(path), "size": info.st_size,
                             "mtime_ns": info.st_mtime_ns, "scanned_at": 1, "file_tags_pending": False}
                            for key, path, info in zip(file_ids, files, stats, strict=True)])  # fmt: skip
        store.write_predictions([doc for key in file_ids for doc in predictions_for(key)])
        store.finish_recalibration(
            [
                {"_key": key, "calibration_hash": "h", "mood_tiers": TIERS, "file_tags_pending": True}
                for key in file_ids
            ]
        )
        with Clock() as clock:
            report = write_pending_tags(
                store, library=library, library_roots=[root], has_calibration=True, writers=writers
            )
    finally:
        store.close()
    assert (report.written, report.failed) == (len(files), 0), report.summary()
    return len(files) / clock.wall, 1000 * clock.cpu / len(files)


def timed_engine(
    files: list[Path], root: Path, tags: dict[str, str | list[str]], engine: str, workers: int
) -> Measure:
    """Files per second of the write jobs alone (no store, no selection) on one engine."""
    jobs = []
    for path in files:
        info = os.stat(path)
        jobs.append(WriteJob(str(path), tags, info.st_size, info.st_mtime_ns, (str(root),), False, True))
    with Clock() as clock:
        writers = TagWriters(1 if engine == "inline" else workers)
        if engine == "threads":
            # Same scheduling, threads instead of the worker processes (this thread writes too).
            writers._executor = ThreadPoolExecutor(writers.processes)
        try:
            results = [result for _, result in writers.run(jobs, expected=len(jobs))]
        finally:
            writers.close()
    assert all(result.status == "written" for result in results)
    return len(files) / clock.wall, 1000 * clock.cpu / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated track")
    parser.add_argument("--writers", type=int, nargs="*", default=[], help="more writer counts to time")
    parser.add_argument("--engines", action="store_true", help="also time inline/threads/processes")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed after")
    parser.add_argument("--per-folder", type=int, default=0, help="files per album folder (0: one folder)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nomarr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tags = tag_set()
    default = parallel.default_writers()
    writer_counts = list(dict.fromkeys([1, default, *args.writers]))
    try:
        sources = make_sources(workdir, args.seconds)
        sizes = ", ".join(f"{p.suffix[1:]} {p.stat().st_size // 1024} KB" for p in sources)
        print(f"{args.files} files per run (mp3/flac/m4a of {args.seconds:g} s: {sizes}), "
              f"{len(tags)} nom: keys, {args.repeats} repetitions, os.cpu_count()={os.cpu_count()}, "
              f"default writers={default}")  # fmt: skip
        print(f"workdir {workdir}: {filesystem_of(workdir)}")
        print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")

        def bare(path: Path) -> None:
            write_nom_tags(path, tags)

        root = workdir / "pipeline"
        results: dict[str, list[Measure]] = {"bare": []}
        for _ in range(args.repeats):
            copies = fresh_copies(sources, workdir / "bare", args.files, args.per_folder)
            results["bare"].append(timed(copies, bare))
            for count in writer_counts:
                files = fresh_copies(sources, root, args.files, args.per_folder)
                results.setdefault(f"pipeline writers={count}", []).append(timed_batch(files, root, count))
                assert read_nom_tags(files[0])[keys.VERSION] == [VERSION]
            if args.engines:
                for engine, workers in (("inline", 1), ("threads", default), ("processes", default)):
                    files = fresh_copies(sources, root, args.files, args.per_folder)
                    name = f"write jobs {engine}" + (f" x{workers}" if engine != "inline" else "")
                    results.setdefault(name, []).append(timed_engine(files, root, tags, engine, workers))

        for name, values in results.items():
            rates, cpu = [rate for rate, _ in values], statistics.median(ms for _, ms in values)
            runs = ", ".join(f"{v:.0f}" for v in rates)
            print(f"{name:>28}: median {statistics.median(rates):7.1f} files/s, {cpu:5.2f} CPU ms/file"
                  f"   (runs: {runs})")  # fmt: skip
        # Ratios are paired per repetition (same moment, same machine load), then the median.
        for name in results:
            if name == "bare":
                continue
            pairs = zip(results[name], results["bare"], strict=True)
            ratio = statistics.median(p[0] / b[0] for p, b in pairs)
            verdict = "meets" if ratio >= 0.5 else "below"
            print(f"{'ratio ' + name:>34}: {ratio:.2f} x bare ({verdict} the 0.5 goal)")
        print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
