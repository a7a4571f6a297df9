"""Benchmark: the pipeline's atomic, verified tag write against a bare in-place mutagen loop.

Both write the same ``nom:`` tag set to fresh copies of the same generated files (mp3, flac,
m4a in turn). The bare loop is ``formats.write_nom_tags`` on the file itself: one mutagen
open + save, no temp copy, no verification, no fsync. The pipeline is
``atomic.write_file_tags``: root and change checks, read, temp copy, write, re-open and
verify, fsync, replace. Goal: pipeline files/s ≥ 0.5 × bare files/s.

    .venv/bin/python benchmarks/bench_tag_writing.py [--files 300] [--repeats 3]
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

import mutagen

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.atomic import write_file_tags
from nomarr_pipeline.tagging.formats import write_nom_tags

ENCODERS = {"mp3": "libmp3lame", "flac": "flac", "m4a": "aac"}
MODEL = "effnet-discogs-effnet-1"
MOOD_HEADS = ["mood_happy", "mood_sad", "mood_party", "mood_relaxed", "mood_aggressive", "mood_acoustic",
              "mood_electronic", "danceability"]  # fmt: skip


def tag_set() -> dict[str, str | list[str]]:
    """A full-mode tag set of realistic size: 8 binary heads, raw + calibrated, tiers, version."""
    tags: dict[str, str | list[str]] = {
        keys.MOOD_STRICT: ["happy"],
        keys.MOOD_REGULAR: ["happy", "party"],
        keys.MOOD_LOOSE: ["happy", "party", "not relaxed"],
        keys.VERSION: "nomarr-bench-1",
    }
    for index, head in enumerate(MOOD_HEADS):
        label = head.removeprefix("mood_")
        for variant, value in ((label, 0.1 + index / 10), (f"non_{label}", 0.9 - index / 10)):
            tags[keys.raw_score_key(MODEL, head, variant)] = keys.format_score(value)
            tags[keys.calibrated_score_key(MODEL, head, variant)] = keys.format_score(value / 2)
    return tags


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


def fresh_copies(sources: list[Path], folder: Path, count: int) -> list[Path]:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    copies = []
    for index, source in zip(range(count), itertools.cycle(sources), strict=False):
        target = folder / f"{index:05d}{source.suffix}"
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def timed(files: list[Path], write_one: Callable[[Path], None]) -> float:
    """Files per second for ``write_one`` over ``files``."""
    started = time.perf_counter()
    for path in files:
        write_one(path)
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated track")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed after")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nomarr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tags = tag_set()
    try:
        sources = make_sources(workdir, args.seconds)
        sizes = ", ".join(f"{p.suffix[1:]} {p.stat().st_size // 1024} KB" for p in sources)
        print(f"{args.files} files per run (mp3/flac/m4a of {args.seconds:g} s: {sizes}), "
              f"{len(tags)} nom: keys, {args.repeats} repetitions")  # fmt: skip

        def bare(path: Path) -> None:
            write_nom_tags(path, tags)

        def pipeline_with(durable: bool) -> Callable[[Path], None]:
            root = workdir / "pipeline"

            def write(path: Path) -> None:
                info = os.stat(path)  # the batch takes these from the store; not a cost here
                outcome = write_file_tags(path, tags, library_roots=[root], expected_size=info.st_size,
                                          expected_mtime_ns=info.st_mtime_ns, durable=durable)  # fmt: skip
                assert outcome.status == "written"

            return write

        results: dict[str, list[float]] = {"bare": [], "pipeline": [], "pipeline (no fsync)": []}
        for _ in range(args.repeats):
            results["bare"].append(timed(fresh_copies(sources, workdir / "bare", args.files), bare))
            for name, durable in (("pipeline", True), ("pipeline (no fsync)", False)):
                files = fresh_copies(sources, workdir / "pipeline", args.files)
                results[name].append(timed(files, pipeline_with(durable)))
                assert mutagen.File(files[0]).tags is not None

        medians = {name: statistics.median(values) for name, values in results.items()}
        for name, values in results.items():
            runs = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:>22}: median {medians[name]:8.1f} files/s   (runs: {runs})")
        # Ratios are paired per repetition (same moment, same machine load), then the median.
        for name in ("pipeline", "pipeline (no fsync)"):
            ratio = statistics.median(p / b for p, b in zip(results[name], results["bare"], strict=True))
            verdict = "meets" if ratio >= 0.5 else "below"
            print(f"{'ratio ' + name:>30}: {ratio:.2f} x bare ({verdict} the 0.5 goal)")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
