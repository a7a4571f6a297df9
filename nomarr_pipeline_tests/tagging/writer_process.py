"""A tag-writing batch in a process of its own, for the crash and concurrency tests.

    python -m nomarr_pipeline_tests.tagging.writer_process STORE_URL LIBRARY_KEY
        [--writers N] [--signal KILL|STOP --after-renames N]

With ``--signal``, the process gets that signal right after its N-th rename of a temp copy onto
a track (SIGKILL: a crash; SIGSTOP: a writer caught in the middle of a
chunk, its next copies prepared and its records not yet made). Prints the batch summary as
JSON when it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from nomarr_pipeline.store import open_store
from nomarr_pipeline.tagging import atomic, batch


def stop_after_renames(signal_number: int, renames: int) -> None:
    real_replace, lock = os.replace, threading.Lock()
    done = [0]

    def replace(source: str, target: str) -> None:
        real_replace(source, target)
        with lock:  # the writer threads rename concurrently
            done[0] += 1
            if done[0] == renames:
                # Sent to this thread, so that it stops (or dies) before its next step: a
                # signal to the process may be taken by another thread, and the stop reach
                # this one only after more renames.
                signal.pthread_kill(threading.get_ident(), signal_number)

    atomic.os.replace = replace  # type: ignore[assignment]  # this process only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store_url")
    parser.add_argument("library")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--signal", choices=["KILL", "STOP"])
    parser.add_argument("--after-renames", type=int, default=1)
    args = parser.parse_args()
    if args.signal:
        stop_after_renames(getattr(signal, f"SIG{args.signal}"), args.after_renames)
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
