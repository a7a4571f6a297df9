"""Auto-tagging in one backbone pass: its cost against the embeddings-only pass.

    .venv/bin/python benchmarks/bench_backbone_pass.py --models-dir ../shared/models
    .venv/bin/python benchmarks/bench_backbone_pass.py --models-dir DIR --seconds 30 --repeats 3

Runs the real ``msd-musicnn-1`` weights (``--models-dir``; never part of the repository) on
generated 16 kHz audio, in this process, three ways per repeat (order rotated each repeat):

* ``embeddings_only``: Essentia's ``TensorflowPredictMusiCNN(output="model/dense/BiasAdd")``,
  the pass the pipeline made before auto-tagging heads (baseline);
* ``one_pass``: ``BackbonePass`` — embeddings and the 50 tag activations from one run;
* ``two_passes``: what Essentia's algorithm needs for both: a second run for ``model/Sigmoid``.

Prints medians and the ratios to the baseline. Goal: one_pass / embeddings_only <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nomarr_pipeline.ml.backbone_pass import BackbonePass
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline_tests.ml.audio_fixtures import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True,
                        help="folder with the real msd-musicnn-1.pb and .json")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the audio")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (args.models_dir / "msd-musicnn-1.pb").is_file():
        raise SystemExit(f"no msd-musicnn-1.pb in {args.models_dir}")

    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    (backbone,) = [b for b in discover_models(args.models_dir).backbones if b.name == "msd-musicnn-1"]
    graph = str(backbone.graph_path)
    embeddings_alg = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/dense/BiasAdd")
    tags_alg = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/Sigmoid")
    one_pass = BackbonePass(backbone)
    audio = synthesize(args.seconds, seed=7, sample_rate=16000)

    outputs = one_pass(audio)
    assert outputs.predictions is not None
    assert np.array_equal(outputs.embeddings, np.asarray(embeddings_alg(audio)))
    assert np.array_equal(outputs.predictions, np.asarray(tags_alg(audio)))

    ways: dict[str, Callable[[], object]] = {
        "embeddings_only": lambda: embeddings_alg(audio),
        "one_pass": lambda: one_pass(audio),
        "two_passes": lambda: (embeddings_alg(audio), tags_alg(audio)),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    print(f"{args.seconds:g} s of audio, {outputs.embeddings.shape[0]} patches, "
          f"{args.repeats} repeats; load {os.getloadavg()[0]:.2f}", flush=True)
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            started = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - started)
        print("  " + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in names), flush=True)

    baseline = statistics.median(times["embeddings_only"])
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:16s} {median:8.3f} s  ratio {median / baseline:.3f}")
    ratio = statistics.median(times["one_pass"]) / baseline
    verdict = "OK" if ratio <= 1.05 else "ABOVE GOAL"
    print(f"one_pass / embeddings_only = {ratio:.3f} (goal <= 1.05) {verdict}")


if __name__ == "__main__":
    main()
