"""Scan benchmark: first scan, unchanged rescan and sensor check of a synthetic library.

    .venv/bin/python benchmarks/bench_scan.py --files 100000

Files are hard links to one tiny WAV spread over folders of 100 (like albums), so building
100k files is quick and takes no disk. Prints medians of --repeat runs and the peak RSS of
this process. Goals (issue 2): unchanged rescan <= 3 s and sensor check <= 1 s for 100k files.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test package's audio fixtures

from nomarr_pipeline.library.changes import changed_folders
from nomarr_pipeline.library.identity import library_key
from nomarr_pipeline.library.scanner import scan_library
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import write_wav


def build_library(root: Path, files: int, per_folder: int) -> None:
    for index in range(files):
        if index % 10_000 == 0:  # file systems cap the hard links of one inode (ext4: 65,000)
            source = write_wav(root.parent / f"source{index}.wav", seconds=0.2)
        folder = root / f"artist{index // (per_folder * 10):04d}" / f"album{index // per_folder:05d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        os.link(source, folder / f"{index % per_folder:03d} track.wav")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-folder", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "library"
        started = time.perf_counter()
        build_library(root, args.files, args.per_folder)
        print(f"built {args.files} files in {time.perf_counter() - started:.1f}s")
        store = open_store(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        rss_before = peak_rss_mb()

        first = scan_library(store, root)
        print(f"first scan:        {first.seconds:8.2f} s  ({first.total} files, {first.folders} folders)")

        rescans = [scan_library(store, root).seconds for _ in range(args.repeat)]
        full = [scan_library(store, root, full=True).seconds for _ in range(args.repeat)]
        cache = store.load_folder_cache(library_key(root.resolve()))
        sensor = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            assert changed_folders(store.load_folder_cache(library_key(root.resolve())), str(root)) == []
            sensor.append(time.perf_counter() - t0)
        print(
            f"unchanged rescan:  {statistics.median(rescans):8.2f} s  median of {args.repeat} (goal <= 3 s)"
        )
        print(f"full rescan:       {statistics.median(full):8.2f} s  median (stats every file; baseline)")
        print(
            f"sensor check:      {statistics.median(sensor):8.3f} s  median, {len(cache)} folders (goal 1s)"
        )
        print(f"rescan / full rescan ratio: {statistics.median(rescans) / statistics.median(full):.2f}")
        print(f"peak RSS:          {peak_rss_mb():8.1f} MB  (before scanning {rss_before:.1f} MB)")


if __name__ == "__main__":
    main()
