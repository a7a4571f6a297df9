"""Analysis throughput on TensorFlow and on ONNX Runtime: bare loops versus the pipeline.

    .venv/bin/python benchmarks/bench_analysis.py --models ../shared/models   # real weights
    .venv/bin/python benchmarks/bench_analysis.py --files 8 --repeats 1       # demo models, quick

With ``--models DIR`` the backbones in DIR (e.g. the trained ``msd-musicnn-1``, its ``.pb`` and,
under ``onnx/``, its ``.onnx``) do the work; heads on them come from DIR, or are the project's
generated demo heads when DIR has none (a head costs little next to its backbone). Without it,
the generated demo models are used. Every section runs on the same generated
``--seconds``-long files, in one run, for each engine (``NOMARR_INFERENCE_ENGINE``):

1. Bare loops (a ``multiprocessing`` pool decoding each file and running the pipeline's own
   inference on it, results only returned; no store, no Dagster): one process per core with one
   thread each, and one process with a thread per core.
2. The pipeline: ``predictions_job`` launched as a run (its own process, the multiprocess
   executor, SQLite store, the default worker plan) per shard count; plus one run with nothing
   left to analyse, which measures the fixed cost of a run (process start-up, model loading).
3. One file's time, broken down: decode, resample, features, network (each engine), store.
4. ONNX Runtime's graph optimisation levels and dynamic int8 quantisation of the backbone:
   CPU per pass and the largest deviation of pooled predictions from TensorFlow's.
5. Sizing: CPU seconds per minute of audio; a projection for 100,000 four-minute tracks.

Each variant runs ``--repeats`` times (alternating order); medians are reported. CPU seconds
(every process a variant started) are the robust figure on a shared machine: other jobs change
the wall time, not the work done.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
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
from nomarr_pipeline.ml.analysis import prediction_docs  # noqa: E402
from nomarr_pipeline.ml.audio import load_audio  # noqa: E402
from nomarr_pipeline.ml.capacity import available_cores  # noqa: E402
from nomarr_pipeline.ml.demo_models import HEADS, write_demo_models  # noqa: E402
from nomarr_pipeline.ml.discovery import Head, discover_models  # noqa: E402
from nomarr_pipeline.store import open_store  # noqa: E402
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio  # noqa: E402

FORMATS = (".mp3", ".flac", ".ogg", ".m4a", ".wav")
ENGINES = ("tensorflow", "onnx")
LIBRARY = "bench"
LIBRARY_TRACKS, TRACK_MINUTES = 100_000, 4.0
MODEL_SUFFIXES = (".pb", ".onnx", ".json")


# ---- models ------------------------------------------------------------------------------
def bench_models(source: Path | None, dest: Path) -> Path:
    """One folder with every model as ``.pb`` and ``.onnx``: those of ``source`` (linked,
    never copied; the first file of each name wins) with generated demo heads on its
    backbones when it has none, or the demo models when there is no ``source``."""
    if source is None:
        write_demo_models(dest, onnx=True)
        return dest
    demo = dest.with_name(f"{dest.name}-demo")
    write_demo_models(demo, onnx=True)
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*"), key=lambda p: len(p.parts)):
        if path.suffix in MODEL_SUFFIXES and path.is_file() and not (dest / path.name).exists():
            (dest / path.name).symlink_to(path.resolve())
    found = discover_models(dest, engine="tensorflow")
    backbones = {b.name for b in found.backbones}
    if not [h for h in found.heads if not h.autotagging]:
        for name in (spec.name for spec in HEADS):
            if name.split("-", 1)[1] in backbones:
                for suffix in MODEL_SUFFIXES:
                    (dest / f"{name}{suffix}").symlink_to(demo / f"{name}{suffix}")
    return dest


def engine_heads(models: Path, engine: str) -> list[Head]:
    catalog = discover_models(models, engine=engine)
    if not catalog.heads or catalog.problems:
        raise SystemExit(f"no heads on {engine} in {models}: {catalog.problems}")
    return list(catalog.heads)


# ---- bare loops --------------------------------------------------------------------------
_bare: dict[str, Any] = {}


def _bare_init(heads: list[Head], env: dict[str, str]) -> None:
    os.environ.update(env)  # before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from nomarr_pipeline.ml.inference import ModelSession

    _bare["session"] = ModelSession()
    _bare["heads"] = heads


def _bare_file(path: str) -> int:
    outcomes = _bare["session"].analyze_audio(load_audio(Path(path)), _bare["heads"])
    assert all(outcome.error is None for outcome in outcomes), outcomes
    return len(outcomes)


@dataclass
class Timing:
    wall: float
    cpu: float  # seconds of CPU of every process the variant started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def threads_env(threads: int) -> dict[str, str]:
    """Both engines' threads per process (what the worker plan sets)."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
            "NOMARR_INFERENCE_THREADS": str(threads)}


def run_bare(files: list[Path], heads: list[Head], processes: int, threads: int) -> Timing:
    cpu, started = _children_cpu(), time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(
        processes, initializer=_bare_init, initargs=(heads, threads_env(threads)))
    assert sum(pool.map(_bare_file, [str(f) for f in files], chunksize=1)) == len(files) * len(heads)
    pool.close()
    pool.join()
    return Timing(time.perf_counter() - started, _children_cpu() - cpu)


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


def run_pipeline(store_url: str, models: Path, heads: list[Head], shards: int, home: Path,
                 engine: str) -> Timing:
    env = {**os.environ, "DAGSTER_HOME": str(home), "NOMARR_STORE_URL": store_url,
           "NOMARR_MODELS_DIR": str(models), "NOMARR_ANALYSIS_SHARDS": str(shards),
           "NOMARR_EXECUTOR": "multiprocess", "NOMARR_INFERENCE_ENGINE": engine}
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


# ---- one file, broken down ------------------------------------------------------------------
def _cpu(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """CPU seconds of one call (after a warm-up call), and its result."""
    result = fn()
    started = time.process_time()
    for _ in range(repeats):
        result = fn()
    return (time.process_time() - started) / repeats, result


def _breakdown(models: str, path: str, store_url: str) -> dict[str, float]:
    """CPU seconds of each stage of one file, in a fresh process with one thread per engine."""
    os.environ.update(threads_env(1))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import essentia.standard as es

    from nomarr_pipeline.ml.backbone_pass import BackbonePass
    from nomarr_pipeline.ml.inference import ModelSession

    stages: dict[str, float] = {}
    stages["decode"], _ = _cpu(lambda: es.AudioLoader(filename=path)())
    mono, audio = _cpu(lambda: load_audio(Path(path)))
    stages["resample"] = max(0.0, mono - stages["decode"])
    for engine in ENGINES:
        heads = engine_heads(Path(models), engine)
        session, features, network = ModelSession(), 0.0, 0.0
        for backbone in {head.backbone.name: head.backbone for head in heads}.values():
            one_pass = BackbonePass(backbone)
            bands, _ = _cpu(lambda one_pass=one_pass: one_pass.bands(audio))
            whole, outputs = _cpu(lambda one_pass=one_pass: one_pass(audio))
            on_it = [head for head in heads if head.backbone.name == backbone.name]
            pooled, _ = _cpu(lambda on_it=on_it, outputs=outputs, session=session: [
                session.head_outcome(h, outputs) for h in on_it])
            features, network = features + bands, network + whole - bands + pooled
        stages["features"] = min(stages.get("features", features), features)  # the same code
        stages[f"network ({engine})"] = network
    head_list = engine_heads(Path(models), "onnx")
    docs = [doc for index in range(64) for head in head_list
            for doc in prediction_docs(f"file{index}", head, [0.5] * len(head.labels),
                                       [0.1] * len(head.labels))]
    store = open_store(store_url)
    written, _ = _cpu(lambda: (store.write_predictions(docs), store.record_analysis(
        [{"_key": f"file{index}", "analyzed_at": 1, "analysis_error": None} for index in range(64)])))
    store.close()
    stages["store"] = written / 64  # the pipeline writes 64 files per batch
    return stages


def _onnx_variants(models: str, path: str, work: str) -> list[tuple[str, float, float]]:
    """(variant, CPU s per backbone pass, largest deviation of pooled values from TensorFlow's)
    for ONNX Runtime's graph optimisation levels and dynamic int8 quantisation."""
    os.environ.update(threads_env(1))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nomarr_pipeline.ml.backbone_pass import BackbonePass
    from nomarr_pipeline.ml.pooling import pool_patches

    backbone = next(h.backbone for h in engine_heads(Path(models), "onnx"))
    reference = BackbonePass(next(h.backbone for h in engine_heads(Path(models), "tensorflow")
                                  if h.backbone.name == backbone.name))
    batches: list[np.ndarray] = []
    network = reference._network  # the patches the pass feeds its network, recorded
    reference._network = lambda batch: (batches.append(batch), network(batch))[1]
    expected = reference(load_audio(Path(path)))
    names = [backbone.predictions_output or backbone.embedding_output]
    count = expected.embeddings.shape[0]
    raw = expected.embeddings if expected.predictions is None else expected.predictions
    truth = pool_patches(raw, raw.shape[1]).values

    def measure(model: Path, level: Any) -> tuple[float, float]:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.graph_optimization_level = 1, level
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        rank = len(session.get_inputs()[0].shape)

        def run() -> np.ndarray:
            feeds = [{backbone.input_node: b.reshape(b.shape[0], *b.shape[1 - rank:])} for b in batches]
            outputs = [session.run(names, feed)[0] for feed in feeds]
            return np.concatenate(outputs)[:count]

        cpu, values = _cpu(run)
        return cpu, float(np.max(np.abs(pool_patches(values, values.shape[1]).values - np.asarray(truth))))

    levels = ort.GraphOptimizationLevel
    found = [(f"optimisation {name}", *measure(backbone.graph_path, level)) for name, level in (
        ("disabled", levels.ORT_DISABLE_ALL), ("basic", levels.ORT_ENABLE_BASIC),
        ("extended", levels.ORT_ENABLE_EXTENDED), ("all (default)", levels.ORT_ENABLE_ALL))]
    for label, weights in (("QUInt8", QuantType.QUInt8), ("QInt8", QuantType.QInt8)):
        quantized = Path(work) / f"{backbone.name}-{label}.onnx"
        quantize_dynamic(backbone.graph_path, quantized, weight_type=weights)
        found.append((f"int8 dynamic, {label} weights", *measure(quantized, levels.ORT_ENABLE_ALL)))
    return found


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ---- the run -----------------------------------------------------------------------------
def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of real Essentia models (default: demo models)")
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", default="1", help="shard counts of the pipeline runs")
    args = parser.parse_args()
    cores = available_cores()
    shard_counts = [int(s) for s in args.shards.split(",")]
    load = os.getloadavg()
    print(f"{cores} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="nomarr-bench-") as tmp:
        work = Path(tmp)
        models = bench_models(args.models, work / "models")
        heads = {engine: engine_heads(models, engine) for engine in ENGINES}
        print(f"heads: {', '.join(h.partition_key for h in heads['onnx'])} "
              f"(backbones: {', '.join(sorted({h.backbone.name for h in heads['onnx']}))})", flush=True)
        print(f"generating {args.files} files of {args.seconds:g} s ...", flush=True)
        files = [make_audio(work / "audio" / f"f{i:05d}{FORMATS[i % len(FORMATS)]}", args.seconds, seed=i)
                 for i in range(args.files)]

        variants: dict[str, Callable[[int], Timing]] = {}
        fixed: dict[str, list[Timing]] = {}
        for engine in ENGINES:
            variants[f"bare {engine}: {cores} processes x 1 thread"] = (
                lambda _, engine=engine: run_bare(files, heads[engine], cores, 1))
            variants[f"bare {engine}: 1 process x {cores} threads"] = (
                lambda _, engine=engine: run_bare(files, heads[engine], 1, cores))
            for shards in shard_counts:
                name = f"pipeline {engine}: {shards} shard(s)"
                fixed[name] = []

                def pipeline(run: int, shards: int = shards, engine: str = engine,
                             name: str = name) -> Timing:
                    url = f"sqlite:///{work / f'bench-{engine}-{shards}-{run}.sqlite3'}"
                    new_store(url, files)
                    home = work / f"home-{engine}-{shards}-{run}"
                    prepare_instance(home, heads[engine])
                    timing = run_pipeline(url, models, heads[engine], shards, home, engine)
                    # Nothing left to analyse: what a run costs besides analysing files.
                    fixed[name].append(run_pipeline(url, models, heads[engine], shards, home, engine))
                    return timing

                variants[name] = pipeline

        results: dict[str, list[Timing]] = {name: [] for name in variants}
        print(f"\n1./2. {len(variants)} variants x {args.repeats} repeats", flush=True)
        for run in range(args.repeats):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(variants[name](run))
                t = results[name][-1]
                print(f"  run {run + 1} {name:<44} {t.wall:7.1f} s wall, {t.cpu:7.1f} s CPU", flush=True)
        report(results, fixed, files, args.seconds, cores, shard_counts[0])

        sample = next(f for f in files if f.suffix != ".opus")
        stages = in_fresh_process(_breakdown, str(models), str(sample), f"sqlite:///{work / 'store.sqlite3'}")
        print(f"\n3. one file of {args.seconds:g} s ({sample.suffix}), CPU seconds by stage (1 thread):")
        for engine in ENGINES:
            total = sum(v for k, v in stages.items() if not k.startswith("network") or engine in k)
            parts = ", ".join(f"{k.split(' (')[0]} {v:.4f} s ({100 * v / total:.0f} %)"
                              for k, v in stages.items() if not k.startswith("network") or engine in k)
            print(f"  {engine}: {parts}; total {total:.4f} s")

        print("\n4. ONNX Runtime options on the backbone (CPU s per pass, 1 thread; largest deviation "
              "of pooled values from TensorFlow's):")
        found = in_fresh_process(_onnx_variants, str(models), str(sample), str(work))
        default = next(cpu for name, cpu, _ in found if name.endswith("(default)"))
        for name, cpu, deviation in found:
            verdict = ""
            if name.startswith("int8"):
                ok = deviation <= 0.01 and default / cpu >= 1.3
                verdict = f" -> {'offer as opt-in' if ok else 'not offered'} (needs <= 0.01 and >= 1.3 x)"
            print(f"  {name:<30} {cpu:7.3f} s, {default / cpu:5.2f} x default, deviation {deviation:.2e}"
                  + verdict)


def report(results: dict[str, list[Timing]], fixed: dict[str, list[Timing]], files: list[Path],
           seconds: float, cores: int, shards: int) -> None:
    minutes = len(files) * seconds / 60
    medians = {name: median(timings) for name, timings in results.items()}
    print(f"\nmedians ({len(files)} files, {minutes:.0f} min of audio):")
    print(f"  {'variant':<46} {'files/s':>8} {'wall s':>8} {'CPU s/audio min':>16}")
    for name, t in medians.items():
        print(f"  {name:<46} {len(files) / t.wall:8.3f} {t.wall:8.1f} {t.cpu / minutes:16.2f}")
    pipeline = {engine: medians[f"pipeline {engine}: {shards} shard(s)"] for engine in ENGINES}
    empty = {engine: median(fixed[f"pipeline {engine}: {shards} shard(s)"]) for engine in ENGINES}
    for engine in ENGINES:
        bare = min((t for name, t in medians.items() if name.startswith(f"bare {engine}:")),
                   key=lambda t: t.wall)
        print(f"  {engine}: pipeline {bare.wall / pipeline[engine].wall:.3f} x best bare loop (wall), "
              f"{bare.cpu / pipeline[engine].cpu:.3f} x (CPU); a run with nothing to do costs "
              f"{empty[engine].wall:.1f} s wall, {empty[engine].cpu:.1f} s CPU")
    onnx, tf = pipeline["onnx"], pipeline["tensorflow"]
    print(f"onnx against tensorflow: pipeline {tf.wall / onnx.wall:.2f} x files/s (goal >= 2.0), "
          f"{tf.cpu / onnx.cpu:.2f} x less CPU; onnx {onnx.cpu / minutes:.2f} CPU s per audio minute "
          f"(goal <= 1.5)")

    print(f"\nsizing: {onnx.cpu / minutes:.2f} s of CPU per minute of audio on onnx, {tf.cpu / minutes:.2f} "
          f"on tensorflow (pipeline, {shards} shard, all processes, fixed costs included)")
    # From CPU seconds, which other jobs on a shared machine do not change (its wall time they do).
    print(f"PROJECTION (not measured): {LIBRARY_TRACKS:,} tracks of {TRACK_MINUTES:g} min on machines "
          f"like this one ({cores} cores, all of them analysing), at the CPU cost of the onnx "
          f"{shards}-shard run:")
    for machines in (1, 4, 16):
        hours = LIBRARY_TRACKS * TRACK_MINUTES * onnx.cpu / minutes / cores / machines / 3600
        print(f"  {machines:2d} machine(s): {hours:7.1f} h")


if __name__ == "__main__":
    main()
