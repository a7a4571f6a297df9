"""Library scale: what a user runs on a very large library, each in a process of its own, with
its wall time and the peak RSS of that process (``wait4``).

    .venv/bin/python benchmarks/bench_library_scale.py --files 600000 [--baseline-files 6000]

1. ``nomarr-pipeline scan`` on a new library (the first scan, a Dagster run in-process);
2. ``nomarr-pipeline scan`` again, nothing changed (one stat per folder);
3. one tick of the real ``library_change_sensor`` (``build_sensor_context`` with the code
   location's own resources, against the same Dagster instance), nothing changed;
4. ``nomarr-pipeline status``.

The library is hard links to tiny WAVs (``bench_scan.build_library``: a new source every 10,000
links, below ext4's 65,000 links per inode), 100 per folder, on the embedded SQLite store. The
same steps run first on a library ``--baseline-files`` large, in the same run: the ratios say
what grows with the number of files (time should, about linearly; memory should not).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import build_library

SENSOR_TICK = """
import time
import dagster as dg
from nomarr_pipeline.definitions import defs
from nomarr_pipeline.defs.sensors import library_change_sensor

resources = {name: defs.resources[name] for name in ("store", "library")}
with dg.DagsterInstance.get() as instance:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        started = time.perf_counter()
        result = library_change_sensor(context)
        seconds = time.perf_counter() - started
print(f"tick {seconds:.3f} s: {type(result).__name__} {getattr(result, 'skip_message', '')}")
"""


def measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``argv`` to its end: (wall seconds, peak RSS of that process in MB, its stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n{text[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def run_steps(files: int, work: Path, per_folder: int) -> dict[str, tuple[float, float]]:
    library = work / "library"
    started = time.perf_counter()
    build_library(library, files, per_folder)
    print(f"\n{files} files: built in {time.perf_counter() - started:.0f} s")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(work / "dagster_home"),
        "NOMARR_DATA_DIR": str(work / "data"),
        "NOMARR_LIBRARY_ROOTS": str(library),
    }
    for name in ("NOMARR_STORE_URL", "NOMARR_MODELS_DIR", "NOMARR_EXPORT_DIR"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "nomarr_pipeline.cli.main"]
    steps = {
        "first scan": [*cli, "scan"],
        "unchanged rescan": [*cli, "scan"],
        "sensor tick": [sys.executable, "-c", SENSOR_TICK],
        "status": [*cli, "status"],
    }
    results = {}
    for step, argv in steps.items():
        seconds, rss, out = measured(argv, env)
        results[step] = (seconds, rss)
        detail = out.strip().splitlines()[-1] if step == "sensor tick" else ""
        print(f"  {step:<17} {seconds:8.2f} s  peak RSS {rss:7.1f} MB  {detail}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=600_000)
    parser.add_argument("--baseline-files", type=int, default=6_000)
    parser.add_argument("--per-folder", type=int, default=100)
    parser.add_argument("--dir", type=Path, help="work here (default: a temp folder); removed afterwards")
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nomarr-scale-", dir=args.dir))
    try:
        baseline = run_steps(args.baseline_files, work / "baseline", args.per_folder)
        large = run_steps(args.files, work / "large", args.per_folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    growth = args.files / args.baseline_files
    print(f"\nratios, {args.files} files vs {args.baseline_files} ({growth:.0f}x the files):")
    for step, (seconds, rss) in large.items():
        base_seconds, base_rss = baseline[step]
        print(f"  {step:<17} time x{seconds / base_seconds:6.1f}   peak RSS x{rss / base_rss:5.2f}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


if __name__ == "__main__":
    main()
