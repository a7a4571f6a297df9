"""How much of a machine one analysis step may use: cores, GPUs, workers and inference threads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver sees
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a container's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cores)
    if quota != "max" and int(period) > 0:
        cores = min(cores, -(-int(quota) // int(period)))  # a partial core still runs a worker
    return max(1, cores)


def visible_gpus(
    environ: Mapping[str, str] | None = None, driver_gpus: Path = NVIDIA_GPUS
) -> tuple[str, ...]:
    """CUDA device ids analysis may use: ``CUDA_VISIBLE_DEVICES`` when set (empty = none),
    otherwise every GPU the NVIDIA driver lists; none without a driver."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return tuple(part.strip() for part in env["CUDA_VISIBLE_DEVICES"].split(",") if part.strip())
    try:
        count = sum(1 for _ in driver_gpus.iterdir())
    except OSError:
        return ()
    return tuple(str(index) for index in range(count))


@dataclass(frozen=True)
class WorkerPlan:
    """Worker processes of one analysis step and the TensorFlow / ONNX Runtime set-up of each."""

    processes: int
    intra_op_threads: int
    inter_op_threads: int
    gpus: tuple[str, ...] = ()  # worker slot i uses gpus[i % len(gpus)]

    def environment(self, slot: int) -> dict[str, str]:
        """Variables a worker sets before TensorFlow loads (which reads them once)."""
        env = {
            "TF_NUM_INTRAOP_THREADS": str(self.intra_op_threads),
            "NOMARR_INFERENCE_THREADS": str(self.intra_op_threads),
            "TF_NUM_INTEROP_THREADS": str(self.inter_op_threads),
            # Several processes share a GPU only if none takes all its memory up front.
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        }
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env


def plan_workers(
    *,
    cores: int,
    concurrent_steps: int = 1,
    processes: int = 0,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    gpus: tuple[str, ...] = (),
) -> WorkerPlan:
    """Split ``cores`` between the ``concurrent_steps`` analysis steps on this machine, their
    workers and their threads (0 means "choose"); one worker per GPU. Steps × workers × threads
    = cores, one thread per worker where it can: a second worker gains more (docs/BENCHMARKS.md).
    """
    share = max(1, cores // max(1, concurrent_steps))
    if processes <= 0:
        processes = len(gpus) if gpus else share
    intra = intra_op_threads if intra_op_threads > 0 else max(1, share // processes)
    inter = inter_op_threads if inter_op_threads > 0 else 1
    return WorkerPlan(processes, intra, inter, tuple(gpus))
