"""Shards, cores, GPUs and TensorFlow threads: how a step divides its machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomarr_pipeline.defs.resources import ModelsResource
from nomarr_pipeline.ml.capacity import available_cores, plan_workers, visible_gpus
from nomarr_pipeline.ml.discovery import ModelCatalog
from nomarr_pipeline.ml.workers import FileTask, WorkerPool
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.worker_faults import CrashingPath


def test_available_cores_honours_a_cgroup_quota(tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    unlimited = available_cores(quota)
    assert unlimited >= 1
    quota.write_text("150000 100000\n")  # 1.5 CPUs: two workers fit
    assert available_cores(quota) == min(unlimited, 2)
    quota.write_text("10000 100000\n")
    assert available_cores(quota) == 1
    assert available_cores(tmp_path / "missing") == unlimited


def test_visible_gpus(tmp_path: Path) -> None:
    driver = tmp_path / "gpus"
    assert visible_gpus({}, driver) == ()
    driver.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir()
    assert visible_gpus({}, driver) == ("0", "1")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, driver) == ("1",)
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == ()


def test_plan_divides_the_cores() -> None:
    # One shard on 8 cores: 8 workers of one thread; 4 shards at once: 2 workers each.
    assert plan_workers(cores=8) == plan_workers(cores=8, concurrent_steps=1)
    one = plan_workers(cores=8)
    assert (one.processes, one.intra_op_threads, one.inter_op_threads) == (8, 1, 1)
    four = plan_workers(cores=8, concurrent_steps=4)
    assert (four.processes, four.intra_op_threads) == (2, 1)
    # Fewer workers than cores: the rest become TensorFlow threads.
    two = plan_workers(cores=8, processes=2)
    assert (two.processes, two.intra_op_threads) == (2, 4)
    # More steps than cores never gives zero.
    assert plan_workers(cores=2, concurrent_steps=4).processes == 1
    # GPUs: one worker each, each pinned to its GPU, memory growth on.
    gpus = plan_workers(cores=8, gpus=("0", "3"))
    assert gpus.processes == 2
    assert [gpus.environment(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["0", "3", "0"]
    assert gpus.environment(0)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert one.environment(0) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                                  "NOMARR_INFERENCE_THREADS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def test_models_resource_plans_from_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMARR_ANALYSIS_SHARDS", "6")  # the environment is the settings' to read
    assert ModelsResource().shard_count() == available_cores()
    assert ModelsResource(shards=2).shard_count() == 2
    plan = ModelsResource(processes=1, tf_threads=3, gpus=[]).worker_plan(1)
    assert (plan.processes, plan.intra_op_threads, plan.gpus) == (1, 3, ())
    monkeypatch.setenv("NOMARR_INFERENCE_THREADS", "2")  # the name for both engines wins
    assert ModelsResource(processes=1).worker_plan(1).intra_op_threads == 2
    assert ModelsResource(gpus=["1"]).worker_plan(1).gpus == ("1",)


def _worker_threads(catalog: ModelCatalog, path: Path, intra: int, inter: int) -> int:
    """Threads of a worker's process after it analysed a file with these TensorFlow threads."""
    environment = {"TF_NUM_INTRAOP_THREADS": str(intra), "TF_NUM_INTEROP_THREADS": str(inter)}
    with WorkerPool(1, 60.0, environment=lambda _slot: environment) as pool:
        ((_, result),) = pool.run([FileTask("a", path, tuple(catalog.heads[:1]))])
        assert all(o.error is None for o in result.outcomes)
        (worker,) = pool._workers
        status = Path(f"/proc/{worker.process.pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("Threads:")))


def test_tensorflow_in_a_worker_uses_the_threads_it_is_given(tmp_path: Path, catalog: ModelCatalog) -> None:
    # The pinned essentia-tensorflow's TensorFlow sizes its thread pools from these variables
    # when its first session starts: 4 + 4 threads instead of 1 + 1.
    path = make_audio(tmp_path / "a.wav", 3.0, seed=1)
    assert _worker_threads(catalog, path, 4, 4) - _worker_threads(catalog, path, 1, 1) == 6


def test_a_replacement_worker_takes_the_slot_of_the_one_it_replaces(
    tmp_path: Path, catalog: ModelCatalog
) -> None:
    path = make_audio(tmp_path / "a.wav", 3.0, seed=1)
    crash = CrashingPath(make_audio(tmp_path / "CRASH.wav", 3.0, seed=2))
    seen: list[int] = []

    def environment(slot: int) -> dict[str, str]:
        seen.append(slot)
        return {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}

    heads = tuple(catalog.heads[:1])
    tasks = [FileTask("crash", crash, heads), *(FileTask(str(n), path, heads) for n in range(3))]
    with WorkerPool(2, 60.0, environment=environment) as pool:
        results = dict(pool.run(tasks))
    assert len(results) == 4
    assert {o.error for o in results[tasks[0]].outcomes} == {
        "worker crashed (signal 11, SIGSEGV) while analysing this file"}
    assert sorted(seen) == [0, 0, 1]  # slot 0 crashed and was filled again; never a slot 2
