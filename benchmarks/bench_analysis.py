"""Analysis throughput: bare Essentia loops versus the pipeline's sharded predictions runs.

    .venv/bin/python benchmarks/bench_analysis.py --models /path/to/models     # real weights
    .venv/bin/python benchmarks/bench_analysis.py --files 8 --repeats 1        # demo models, quick

With ``--models DIR`` the backbones in DIR (e.g. the trained ``msd-musicnn-1``) do the work;
heads on them come from DIR, or are the project's generated demo heads when DIR has none (a
head costs little next to its backbone). Without it, the generated demo models are used. All
sections run on the same generated ``--seconds``-long files, in one run:

1. TensorFlow threads: one worker with TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS set
   (or not): the threads its process has, CPU and wall time of a backbone pass.
2. Bare loops (a ``multiprocessing`` pool running MonoLoader, each backbone once and every head,
   results only returned): one process with all TensorFlow threads; one process per core with
   one thread each; one per core with TensorFlow's default threads; and, decoding with ffmpeg,
   one per core without and with the next file decoded while TensorFlow runs (the overlap).
3. The pipeline: ``predictions_job`` launched as a run (its own process, the multiprocess
   executor, SQLite store) with 1, 2 and 4 shard steps and the default worker plan; plus one
   run per shard count with nothing left to analyse, which measures the fixed cost of a run
   (process start-up, model loading), so the steady rate of a long run can be told apart.
4. Sizing: CPU seconds per minute of audio; a projection for 100,000 four-minute tracks.

Each variant runs ``--repeats`` times (alternating order); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

# The audio generator and the run launcher live with the tests; make the repository importable.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nomarr_pipeline.library.identity import file_key  # noqa: E402
from nomarr_pipeline.ml.audio import decode_with_ffmpeg  # noqa: E402
from nomarr_pipeline.ml.capacity import available_cores  # noqa: E402
from nomarr_pipeline.ml.demo_models import HEAD_NAMES, write_demo_models  # noqa: E402
from nomarr_pipeline.ml.discovery import Head, discover_models  # noqa: E402
from nomarr_pipeline.store import open_store  # noqa: E402
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio  # noqa: E402

FORMATS = (".mp3", ".flac", ".ogg", ".m4a", ".wav")
LIBRARY = "bench"
LIBRARY_TRACKS, TRACK_MINUTES = 100_000, 4.0


# ---- models ------------------------------------------------------------------------------
def bench_models(source: Path | None, dest: Path) -> list[Head]:
    """Classifier heads to run: those in ``source`` (linked, never copied), or generated demo
    heads on its backbones; the demo models when there is no ``source``."""
    if source is None:
        write_demo_models(dest)
    else:
        demo = dest.with_name(f"{dest.name}-demo")
        write_demo_models(demo)
        dest.mkdir(parents=True, exist_ok=True)
        for path in source.rglob("*"):
            if path.suffix in (".pb", ".json") and path.is_file():
                (dest / path.name).symlink_to(path.resolve())
        found = discover_models(dest)
        backbones = {b.name for b in found.backbones}
        if not [h for h in found.heads if not getattr(h, "autotagging", False)]:
            for name in HEAD_NAMES:
                if name.split("-", 1)[1] in backbones:
                    for suffix in (".pb", ".json"):
                        shutil.copy(demo / f"{name}{suffix}", dest / f"{name}{suffix}")
    # The bare loop runs heads with TensorflowPredict2D: auto-tagging outputs are left out.
    heads = [h for h in discover_models(dest).heads if not getattr(h, "autotagging", False)]
    if not heads:
        raise SystemExit(f"no backbone with a head in {source}")
    return heads


# ---- bare loops --------------------------------------------------------------------------
_bare: dict[str, Any] = {}


def _bare_init(heads: list[Head], env: dict[str, str], prefetch: bool) -> None:
    os.environ.update(env)  # before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    _bare["backbones"] = {
        h.backbone.name: getattr(es, h.backbone.algorithm)(
            graphFilename=str(h.backbone.graph_path), output=h.backbone.embedding_output)
        for h in heads
    }
    _bare["heads"] = [
        (h.backbone.name, es.TensorflowPredict2D(graphFilename=str(h.graph_path),
                                                 input=h.input_node, output=h.output_node))
        for h in heads
    ]
    _bare["loader"] = es.MonoLoader
    _bare["prefetch"] = prefetch


def _infer(audio: np.ndarray) -> list[np.ndarray]:
    embeddings = {name: model(audio) for name, model in _bare["backbones"].items()}
    return [np.mean(model(embeddings[backbone]), axis=0) for backbone, model in _bare["heads"]]


def _bare_file(path: str) -> int:
    audio = _bare["loader"](filename=path, sampleRate=16000, resampleQuality=4)()
    return len(_infer(audio))


def _ffmpeg_files(paths: list[str]) -> int:
    """One worker's share, decoded by ffmpeg; with prefetch the next file is decoded (in an
    ffmpeg process) while TensorFlow works on the current one."""
    if not _bare["prefetch"]:
        return sum(len(_infer(decode_with_ffmpeg(Path(p)))) for p in paths)
    if not paths:  # fewer files than workers
        return 0
    done = 0
    box: dict[str, np.ndarray] = {}

    def decode(path: str) -> None:
        box["next"] = decode_with_ffmpeg(Path(path))

    decode(paths[0])
    for index in range(len(paths)):
        audio = box.pop("next")
        ahead = threading.Thread(target=decode, args=(paths[index + 1],)) if index + 1 < len(paths) else None
        if ahead:
            ahead.start()
        done += len(_infer(audio))
        if ahead:
            ahead.join()
    return done


@dataclass
class Timing:
    wall: float
    cpu: float  # seconds of CPU of every process the variant started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bare(files: list[Path], heads: list[Head], processes: int, env: dict[str, str],
             *, ffmpeg: bool = False, prefetch: bool = False) -> Timing:
    cpu, started = _children_cpu(), time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(
        processes, initializer=_bare_init, initargs=(heads, env, prefetch))
    paths = [str(f) for f in files]
    if ffmpeg:
        shares = [paths[i::processes] for i in range(processes)]
        assert sum(pool.map(_ffmpeg_files, shares, chunksize=1)) == len(files) * len(heads)
    else:
        assert sum(pool.map(_bare_file, paths, chunksize=1)) == len(files) * len(heads)
    pool.close()
    pool.join()
    return Timing(time.perf_counter() - started, _children_cpu() - cpu)


def thread_probe(heads: list[Head], path: Path, env: dict[str, str]) -> tuple[int, float, float]:
    """(threads of the process, CPU s, wall s) of one backbone pass in a fresh worker."""
    with multiprocessing.get_context("spawn").Pool(1, initializer=_bare_init,
                                                   initargs=(heads, env, False)) as pool:
        return pool.apply(_probe, (str(path),))


def _probe(path: str) -> tuple[int, float, float]:
    audio = _bare["loader"](filename=path, sampleRate=16000, resampleQuality=4)()
    _infer(audio)  # sessions created, TensorFlow's thread pools started
    status = Path("/proc/self/status").read_text().splitlines()
    threads = int(next(line.split()[1] for line in status if line.startswith("Threads:")))
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(3):
        _infer(audio)
    return threads, (time.process_time() - cpu) / 3, (time.perf_counter() - started) / 3


# ---- the pipeline ------------------------------------------------------------------------
def new_store(url: str, files: list[Path]) -> None:
    store = open_store(url)
    root = files[0].parent
    store.ensure_library({"_key": LIBRARY, "name": "bench", "root_path": str(root)})
    store.upsert_files([
        {"_key": file_key(LIBRARY, f.name), "library_id": LIBRARY, "path": f.name,
         "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
        for f in files
    ])
    store.close()


def run_pipeline(store_url: str, models: Path, heads: list[Head], shards: int, home: Path) -> Timing:
    env = {**os.environ, "DAGSTER_HOME": str(home), "NOMARR_STORE_URL": store_url,
           "NOMARR_MODELS_DIR": str(models), "NOMARR_ANALYSIS_SHARDS": str(shards),
           "NOMARR_EXECUTOR": "multiprocess"}
    keys = sorted(h.partition_key for h in heads)
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nomarr_pipeline_tests.defs.assets.predictions_run", keys[0], keys[-1]],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )
    timing = Timing(time.perf_counter() - started, _children_cpu() - cpu)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not json.loads(lines[-1])["success"]:
        raise SystemExit(f"pipeline run with {shards} shards failed:\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-4000:]}")
    run_id = json.loads(lines[-1])["run_id"]
    print(f"    files per shard (claimed at run time): {files_per_shard(home, run_id)}")
    return timing


def files_per_shard(home: Path, run_id: str) -> list[int]:
    """How many files each shard step of the run analysed (its output metadata)."""
    with dg.DagsterInstance.local_temp(str(home)) as instance:  # the run's instance, in ``home``
        outputs = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
        return [
            int(entry.metadata["files"].value)
            for entry in (log.dagster_event.event_specific_data for log in outputs)
            if "files" in entry.metadata
        ]


def prepare_instance(home: Path, heads: list[Head]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    # The instance's partitions must be known before a run names them.
    code = ("import dagster as dg, sys\nwith dg.DagsterInstance.get() as i:\n"
            "    i.add_dynamic_partitions('heads', sys.argv[1:])")
    subprocess.run([sys.executable, "-c", code, *sorted(h.partition_key for h in heads)],
                   env=env, check=True, capture_output=True)


# ---- the run -----------------------------------------------------------------------------
def tf_env(intra: int, inter: int) -> dict[str, str]:
    """TensorFlow's thread variables; 0: unset (TensorFlow's default)."""
    if not intra:
        return {}
    return {"TF_NUM_INTRAOP_THREADS": str(intra), "TF_NUM_INTEROP_THREADS": str(inter)}


def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of real Essentia models (default: demo models)")
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", default="1,2,4", help="shard counts of the pipeline runs")
    args = parser.parse_args()
    cores = available_cores()
    shard_counts = [int(s) for s in args.shards.split(",")]
    load = os.getloadavg()
    print(f"{cores} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="nomarr-bench-") as tmp:
        work = Path(tmp)
        heads = bench_models(args.models, work / "models")
        print(f"heads: {', '.join(h.partition_key for h in heads)} "
              f"(backbones: {', '.join(sorted({h.backbone.name for h in heads}))})", flush=True)
        print(f"generating {args.files} files of {args.seconds:g} s ...", flush=True)
        files = [make_audio(work / "audio" / f"f{i:05d}{FORMATS[i % len(FORMATS)]}", args.seconds, seed=i)
                 for i in range(args.files)]

        print("\n1. TensorFlow threads of one worker (threads of its process; per backbone pass)")
        for intra, inter in ((0, 0), (1, 1), (cores, 1), (cores, cores)):
            label = f"intra {intra}, inter {inter}" if intra else "TensorFlow default"
            threads, cpu, wall = thread_probe(heads, files[0], tf_env(intra, inter))
            print(f"  {label:<22} {threads:3d} threads, {cpu:.2f} s CPU, {wall:.2f} s wall, "
                  f"CPU/wall {cpu / wall:.2f}", flush=True)

        one_thread = tf_env(1, 1)
        variants: dict[str, Callable[[int], Timing]] = {
            f"bare: 1 process x {cores} TF threads": lambda _: run_bare(
                files, heads, 1, tf_env(cores, cores)),
            f"bare: {cores} processes x 1 TF thread": lambda _: run_bare(files, heads, cores, one_thread),
            f"bare: {cores} processes x TF default threads": lambda _: run_bare(files, heads, cores, {}),
            f"bare ffmpeg: {cores} x 1, sequential": lambda _: run_bare(
                files, heads, cores, one_thread, ffmpeg=True),
            f"bare ffmpeg: {cores} x 1, decode overlapped": lambda _: run_bare(
                files, heads, cores, one_thread, ffmpeg=True, prefetch=True),
        }
        models = work / "models"
        fixed: dict[int, list[Timing]] = {s: [] for s in shard_counts}
        for shards in shard_counts:
            def pipeline(run: int, shards: int = shards) -> Timing:
                url = f"sqlite:///{work / f'bench-{shards}-{run}.sqlite3'}"
                new_store(url, files)
                home = work / f"home-{shards}-{run}"
                prepare_instance(home, heads)
                timing = run_pipeline(url, models, heads, shards, home)
                # Nothing left to analyse: what a run costs besides analysing files.
                fixed[shards].append(run_pipeline(url, models, heads, shards, home))
                return timing

            variants[f"pipeline: {shards} shard(s)"] = pipeline

        results: dict[str, list[Timing]] = {name: [] for name in variants}
        print(f"\n2./3. {len(variants)} variants x {args.repeats} repeats", flush=True)
        for run in range(args.repeats):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(variants[name](run))
                t = results[name][-1]
                print(f"  run {run + 1} {name:<44} {t.wall:7.1f} s wall, {t.cpu:7.1f} s CPU", flush=True)
        report(results, fixed, files, args.seconds, cores, shard_counts)


def report(results: dict[str, list[Timing]], fixed: dict[int, list[Timing]], files: list[Path],
           seconds: float, cores: int, shard_counts: list[int]) -> None:
    minutes = len(files) * seconds / 60
    medians = {name: median(timings) for name, timings in results.items()}
    print(f"\nmedians ({len(files)} files, {minutes:.0f} min of audio):")
    print(f"  {'variant':<46} {'files/s':>8} {'wall s':>8} {'CPU s/audio min':>16}")
    for name, t in medians.items():
        print(f"  {name:<46} {len(files) / t.wall:8.3f} {t.wall:8.1f} {t.cpu / minutes:16.2f}")
    bare = {name: t for name, t in medians.items() if name.startswith("bare:")}
    best_name = min(bare, key=lambda name: bare[name].wall)
    best = bare[best_name]
    print(f"\nbest bare loop: {best_name}")
    # A long run's rate: the whole run minus what a run with nothing to analyse costs (None
    # when the machine was too noisy to tell them apart). CPU seconds are the robust figure on
    # a shared machine: other jobs change the wall time, not the work done.
    steady: dict[int, float | None] = {}
    steady_cpu: dict[int, float] = {}
    for shards in shard_counts:
        run = medians[f"pipeline: {shards} shard(s)"]
        empty = median(fixed[shards])
        steady[shards] = run.wall - empty.wall if run.wall > 2 * empty.wall else None
        steady_cpu[shards] = run.cpu - empty.cpu
        rest = steady[shards]
        print(f"  pipeline {shards} shard(s): {best.wall / run.wall:.3f} x best bare (wall, whole run), "
              f"{best.cpu / run.cpu:.3f} x (CPU); a run with nothing to do costs {empty.wall:.1f} s wall, "
              f"{empty.cpu:.1f} s CPU; without it {best.cpu / steady_cpu[shards]:.3f} x (CPU)"
              + (f", {best.wall / rest:.3f} x (wall)" if rest else ""))
    first = shard_counts[0]
    base = medians[f"pipeline: {first} shard(s)"]
    print(f"  goal: {first} shard >= 0.95 x best bare -> wall {best.wall / base.wall:.3f}, "
          f"CPU {best.cpu / base.cpu:.3f}, CPU without fixed costs {best.cpu / steady_cpu[first]:.3f}")
    for shards in shard_counts[1:]:
        run = medians[f"pipeline: {shards} shard(s)"]
        rest, base_rest = steady[shards], steady[first]
        print(f"  {shards} shards cost {100 * (run.wall / base.wall - 1):+.1f} % wall, "
              f"{100 * (run.cpu / base.cpu - 1):+.1f} % CPU against {first} (goal <= +5 %); without "
              f"fixed costs {100 * (steady_cpu[shards] / steady_cpu[first] - 1):+.1f} % CPU"
              + (f", {100 * (rest / base_rest - 1):+.1f} % wall" if rest and base_rest else ""))
    overlap = medians[f"bare ffmpeg: {cores} x 1, decode overlapped"]
    plain = medians[f"bare ffmpeg: {cores} x 1, sequential"]
    print(f"  decoding the next file during inference: {100 * (plain.wall / overlap.wall - 1):+.1f} % "
          f"throughput, {100 * (overlap.cpu / plain.cpu - 1):+.1f} % CPU")

    cpu_per_minute = base.cpu / minutes
    per_audio_minute = (steady[first] or base.wall) / minutes  # wall seconds on this machine
    library_minutes = LIBRARY_TRACKS * TRACK_MINUTES
    print(f"\nsizing: {cpu_per_minute:.2f} s of CPU per minute of audio (pipeline, "
          f"{first} shard, all processes, fixed costs included)")
    print(f"PROJECTION (not measured): {LIBRARY_TRACKS:,} tracks of {TRACK_MINUTES:g} min on machines "
          f"like this one ({cores} cores), one shard step each, at the steady rate of the "
          f"{first}-shard run:")
    for machines in (1, 4, 16):
        hours = library_minutes * per_audio_minute / machines / 3600
        print(f"  {machines:2d} machine(s): {hours:7.1f} h")


if __name__ == "__main__":
    main()
