"""Analysis throughput: the pipeline's ``analyze`` versus a bare Essentia loop.

    .venv/bin/python benchmarks/bench_analysis.py                  # 200 files, all demo heads
    .venv/bin/python benchmarks/bench_analysis.py --files 50 --processes 2 --seconds 30

Both sides analyse the same generated audio files with the same tiny demo models (two
backbones, seven heads) and the same number of worker processes (spawned, models loaded
once per worker, process start-up included in both timings):

* ``pipeline``: ``nomarr_pipeline.ml.analysis.analyze`` on a fresh SQLite store — paging,
  worker isolation with timeouts, pooling, batched writes of every prediction;
* ``bare``: a ``multiprocessing.Pool`` whose workers run MonoLoader, each backbone once and
  every head on its embeddings, with a plain mean; results are only returned, not stored.

Each side runs ``--repeats`` times (default 3); medians are reported. Goal: ratio >= 0.85.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# The audio generator lives with the tests; make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nomarr_pipeline.ml.analysis import analyze
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import Head, discover_models
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio

FORMATS = (".mp3", ".flac", ".ogg", ".m4a", ".wav")


# ---- bare loop ------------------------------------------------------------------------
_bare_models: dict[str, Any] = {}


def _bare_init(heads: list[Head]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    backbones = {h.backbone.name: h.backbone for h in heads}
    _bare_models["backbones"] = {
        name: getattr(es, b.algorithm)(graphFilename=str(b.graph_path),
                                       output=b.embedding_output)
        for name, b in backbones.items()
    }
    _bare_models["heads"] = [
        (h.backbone.name, es.TensorflowPredict2D(graphFilename=str(h.graph_path),
                                                 input=h.input_node, output=h.output_node))
        for h in heads
    ]
    _bare_models["loader"] = es.MonoLoader


def _bare_file(path: str) -> list[np.ndarray]:
    audio = _bare_models["loader"](filename=path, sampleRate=16000, resampleQuality=4)()
    embeddings = {name: model(audio) for name, model in _bare_models["backbones"].items()}
    return [np.mean(model(embeddings[backbone]), axis=0)
            for backbone, model in _bare_models["heads"]]


def run_bare(files: list[Path], heads: list[Head], processes: int) -> float:
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_bare_init, initargs=(heads,)) as pool:
        results = pool.map(_bare_file, [str(f) for f in files], chunksize=1)
    assert len(results) == len(files)
    return time.perf_counter() - started


# ---- pipeline -------------------------------------------------------------------------
def run_pipeline(files: list[Path], heads: list[Head], processes: int, workdir: Path,
                 run: int) -> float:
    store = open_store(f"sqlite:///{workdir / f'bench-{run}.db'}")
    store.upsert_files([
        {"_key": f"{i:06d}", "library_id": "bench", "path": str(f),
         "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
        for i, f in enumerate(files)
    ])
    started = time.perf_counter()
    reports = analyze(store, heads, processes=processes, file_timeout_s=300)
    seconds = time.perf_counter() - started
    failed = sum(r.failed for r in reports.values())
    if failed or any(r.analysed != len(files) for r in reports.values()):
        raise SystemExit(f"pipeline run {run} failed files: {[r.errors for r in reports.values()]}")
    store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each file")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nomarr-bench-") as tmp:
        workdir = Path(tmp)
        write_demo_models(workdir / "models")
        # The bare loop runs heads through TensorflowPredict2D: the seven classifier heads.
        heads = [h for h in discover_models(workdir / "models").heads if not h.autotagging]
        print(f"generating {args.files} files of {args.seconds:g} s ...", flush=True)
        files = [make_audio(workdir / "audio" / f"f{i:05d}{FORMATS[i % len(FORMATS)]}",
                            args.seconds, seed=i) for i in range(args.files)]
        print(f"{len(heads)} heads on {len({h.backbone.name for h in heads})} backbones, "
              f"{args.processes} processes, {args.repeats} repeats", flush=True)
        bare_times, pipeline_times = [], []
        for run in range(args.repeats):
            # Alternate the order so neither side always gets the warmer page cache.
            if run % 2 == 0:
                bare_times.append(run_bare(files, heads, args.processes))
                pipeline_times.append(run_pipeline(files, heads, args.processes, workdir, run))
            else:
                pipeline_times.append(run_pipeline(files, heads, args.processes, workdir, run))
                bare_times.append(run_bare(files, heads, args.processes))
            print(f"  run {run + 1}: bare {bare_times[-1]:.2f}s, "
                  f"pipeline {pipeline_times[-1]:.2f}s", flush=True)

    bare_rate = args.files / statistics.median(bare_times)
    pipeline_rate = args.files / statistics.median(pipeline_times)
    print(f"bare loop : {bare_rate:7.2f} files/s (median of {args.repeats})")
    print(f"pipeline  : {pipeline_rate:7.2f} files/s (median of {args.repeats})")
    ratio = pipeline_rate / bare_rate
    print(f"ratio     : {ratio:.3f} (goal >= 0.85) {'OK' if ratio >= 0.85 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
