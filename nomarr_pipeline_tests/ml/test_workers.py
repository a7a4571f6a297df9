"""Worker isolation: a crashing or hanging file costs only that file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomarr_pipeline.ml.discovery import ModelCatalog
from nomarr_pipeline.ml.workers import FileTask, WorkerPool
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.worker_faults import faulty


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("worker-audio")
    names = ["a.wav", "CRASH-b.wav", "c.wav", "HANG-d.wav", "e.wav"]
    return {name: make_audio(folder / name, 3.0, seed=i) for i, name in enumerate(names)}


def _tasks(files: dict[str, Path], catalog: ModelCatalog, names: list[str]) -> list[FileTask]:
    heads = tuple(catalog.heads[:2])
    return [FileTask(name, faulty(files[name]), heads) for name in names]


def test_crash_and_hang_do_not_stop_the_run(
    files: dict[str, Path], catalog: ModelCatalog
) -> None:
    names = list(files)
    with WorkerPool(processes=2, file_timeout_s=8.0) as pool:
        results = {task.file_id: result for task, result in pool.run(_tasks(files, catalog, names))}
        # The pool still works after replacing workers.
        again = list(pool.run(_tasks(files, catalog, ["a.wav"])))
    assert set(results) == set(names)
    for name in ("a.wav", "c.wav", "e.wav"):
        assert all(o.error is None for o in results[name].outcomes), results[name]
    crash_errors = {o.error for o in results["CRASH-b.wav"].outcomes}
    assert crash_errors == {"worker crashed (signal 11, SIGSEGV) while analysing this file"}
    hang_errors = {o.error for o in results["HANG-d.wav"].outcomes}
    assert hang_errors == {"timed out after 8s; the worker was stopped"}
    assert all(o.error is None for o in again[0][1].outcomes)


def test_worker_pool_defaults_to_cpu_count() -> None:
    import os

    assert WorkerPool().processes == max(1, os.cpu_count() or 1)
    with pytest.raises(ValueError, match="file_timeout_s"):
        WorkerPool(file_timeout_s=0)
