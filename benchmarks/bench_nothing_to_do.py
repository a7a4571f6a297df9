"""What nothing to do costs: the demo run again, and ``nomarr-pipeline run`` with nothing changed.

    .venv/bin/python benchmarks/bench_nothing_to_do.py --repeat 3

In a fresh folder: one ``demo`` (the real work), then ``--repeat`` times each of ``demo`` and
``run`` again, every command a new process in a clean environment (only the folder's .env
configures it, as after scripts/demo.sh). Prints the first demo and the medians. Goals
(issue 22): a second demo <= 15 s, a no-op run <= 8 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = Path(sys.executable).with_name("nomarr-pipeline")


def timed(folder: Path, *args: str) -> float:
    started = time.monotonic()
    subprocess.run([str(CLI), *args], cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": str(folder)},
                   check=True, capture_output=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nomarr-bench-") as tmp:
        folder = Path(tmp)
        demo = ("demo", "--folder", str(folder / "demo"))
        print(f"first demo: {timed(folder, *demo):.1f} s")
        again = [timed(folder, *demo) for _ in range(args.repeat)]
        runs = [timed(folder, "run") for _ in range(args.repeat)]
    print(f"demo again: median {statistics.median(again):.1f} s of {[round(t, 1) for t in again]}")
    print(f"no-op run:  median {statistics.median(runs):.1f} s of {[round(t, 1) for t in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
