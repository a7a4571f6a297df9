"""The embedded store's write-ahead log stays bounded while several processes write at once."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from nomarr_pipeline.store import open_store
from nomarr_pipeline.store.sqlite import WAL_LIMIT_BYTES

BATCHES, FILES_PER_BATCH, LABELS = 300, 16, 50


def _write(url: str, writer: int) -> None:
    store = open_store(url)
    for number in range(BATCHES):
        store.write_predictions([
            {"_key": f"{writer}-{number}-{file}|m|h|l{label}", "file_id": f"{writer}-{number}-{file}",
             "model_key": "m", "head_name": "h", "label": f"l{label}",
             # spread values: each batch touches pages all over the histogram index
             "value": (number * file + label) % 997 / 997,
             "std": 0.0, "calibrated_value": None, "nomarr_only": True, "tagger_version": "v"}
            for file in range(FILES_PER_BATCH) for label in range(LABELS)
        ])  # fmt: skip
    store.close()


def test_two_processes_writing_back_to_back_keep_the_wal_bounded(tmp_path: Path) -> None:
    """Their automatic checkpoints never reach the end of a log the other one keeps writing:
    without a checkpoint that waits, the log grew past 200 MB here (49 GB and a full disk
    for 10 M rows written by 4 processes)."""
    path = tmp_path / "store.sqlite3"
    url = f"sqlite:///{path}"
    open_store(url).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(url, writer)) for writer in range(2)]
    for process in writers:
        process.start()
    largest = 0
    while any(process.is_alive() for process in writers):
        if os.path.exists(f"{path}-wal"):
            largest = max(largest, os.stat(f"{path}-wal").st_size)
        time.sleep(0.02)
    assert [process.exitcode for process in writers] == [0, 0]
    assert largest < 2 * WAL_LIMIT_BYTES, f"the WAL grew to {largest / 1e6:.0f} MB"
    store = open_store(url)
    assert store.count_documents("file_tags") == 2 * BATCHES * FILES_PER_BATCH * LABELS
