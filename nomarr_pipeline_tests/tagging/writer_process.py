"""A tag-writing batch in a process of its own, for the crash and concurrency tests.

    python -m nomarr_pipeline_tests.tagging.writer_process STORE_URL LIBRARY_KEY
        [--writers N] [--pool] [--signal KILL|STOP --after-renames N]

With ``--signal``, the process (or one of its worker processes) sends its process group that
signal right after its N-th rename of a temp copy onto a track (SIGKILL: a crash; SIGSTOP: a
writer caught in the middle of a chunk, its next copies prepared and its records not yet
made). ``--pool`` starts worker processes even for a small library. Prints the batch summary
as JSON when it finishes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal

from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline.tagging import atomic, batch


def stop_after_renames(signal_number: int, renames: int) -> None:
    real_replace = os.replace
    done = [0]

    def replace(source: str, target: str) -> None:
        real_replace(source, target)
        done[0] += 1
        if done[0] == renames:
            os.killpg(os.getpgrp(), signal_number)  # with its worker processes, if any

    atomic.os.replace = replace  # type: ignore[assignment]  # this process only


def open_worker_that_stops(signal_number: int, renames: int, store: Store) -> None:
    """A worker process' initializer that counts its own renames (workers rename too)."""
    stop_after_renames(signal_number, renames)
    open_worker(store)


open_worker = batch._open_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store_url")
    parser.add_argument("library")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--pool", action="store_true")
    parser.add_argument("--signal", choices=["KILL", "STOP"])
    parser.add_argument("--after-renames", type=int, default=1)
    args = parser.parse_args()
    if args.signal:
        signal_number = getattr(signal, f"SIG{args.signal}")
        stop_after_renames(signal_number, args.after_renames)
        batch._open_worker = functools.partial(open_worker_that_stops, signal_number, args.after_renames)
    if args.pool:
        batch.POOL_MIN_FILES = 1
    store = open_store(args.store_url)
    library = store.get_library(args.library)
    assert library is not None, f"no library {args.library!r} in {args.store_url}"
    report = batch.write_pending_tags(
        store, library=library, library_roots=[library["root_path"]], has_calibration=True,
        writers=args.writers,
    )  # fmt: skip
    print(json.dumps(report.summary()))


if __name__ == "__main__":
    main()
