"""One run of a backbone network per file, giving its embeddings and its own predictions.

Essentia's ``TensorflowPredictEffnetDiscogs``/``TensorflowPredictMusiCNN`` fetch a single
output, so an auto-tagging model would need a second pass for its tags. This does what they do
inside (frames, mel bands, patches, batches of 64) but asks the network for every output at
once, with the algorithms' results value for value; an ``.onnx`` gets the very same patches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nomarr_pipeline.ml.discovery import Backbone, engine_of

# Patches per TensorflowPredict call: Essentia's default, and the fixed batch of the real
# discogs-effnet-bs64 graphs.
BATCH_SIZE = 64


@dataclass(frozen=True)
class PatchRecipe:
    """How one backbone family turns audio into the input patches of its network."""

    frame_size: int
    hop_size: int
    bands: int
    patch_size: int
    patch_hop: int
    # effnet-bs64 graphs take exactly BATCH_SIZE patches: the last batch is padded, and the
    # number of patches kept follows Essentia's estimate (see essentia_patch_count).
    fixed_batch: bool


# The values Essentia's algorithms hard-code or default to (docs/ARCHITECTURE.md §4).
RECIPES: dict[str, PatchRecipe] = {
    "musicnn": PatchRecipe(512, 256, 96, 187, 93, fixed_batch=False),
    "effnet": PatchRecipe(512, 256, 96, 128, 62, fixed_batch=True),
}


def essentia_patch_count(samples: int, frames: int, recipe: PatchRecipe) -> int:
    """How many patches Essentia's algorithm returns: one every ``patch_hop`` frames, the last
    incomplete one dropped; with a fixed batch, no more than TensorflowPredictEffnetDiscogs'
    float32 estimate of the frame count allows (which can be one fewer)."""
    available = 0 if frames < recipe.patch_size else 1 + (frames - recipe.patch_size) // recipe.patch_hop
    if not recipe.fixed_batch:
        return available
    hops = np.float32((samples - recipe.frame_size / 2.0) / recipe.hop_size)
    estimated_frames = 1 + int(np.ceil(hops))
    patch_hops = np.float32(estimated_frames - recipe.patch_size) / np.float32(recipe.patch_hop)
    estimated = 1 + int(np.floor(patch_hops))
    return max(0, min(available, estimated))


@dataclass(frozen=True)
class BackboneOutputs:
    """``[patches, embedding_size]`` embeddings and, for an auto-tagging model,
    ``[patches, classes]`` predictions of the same patches."""

    embeddings: np.ndarray
    predictions: np.ndarray | None


class BackbonePass:
    """A loaded backbone that yields embeddings and its own predictions from one run."""

    def __init__(self, backbone: Backbone) -> None:
        import essentia.standard as es

        self.recipe = RECIPES[backbone.family]
        self._input = backbone.input_node
        self._outputs = [backbone.embedding_output]
        if backbone.predictions_output:
            self._outputs.append(backbone.predictions_output)
        self._mel = es.TensorflowInputMusiCNN()
        self._frames = es.FrameGenerator
        self._network = network(backbone.graph_path, self._input, self._outputs)

    def bands(self, audio: np.ndarray) -> np.ndarray:
        """``[frames, bands]`` mel bands, framed as Essentia's FrameCutter frames them."""
        recipe = self.recipe
        frames = self._frames(audio, frameSize=recipe.frame_size, hopSize=recipe.hop_size)
        rows = [self._mel(frame) for frame in frames]
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), recipe.bands)

    def __call__(self, audio: np.ndarray) -> BackboneOutputs:
        recipe = self.recipe
        bands = self.bands(audio)
        count = essentia_patch_count(audio.size, bands.shape[0], recipe)
        results: list[list[np.ndarray]] = [[] for _ in self._outputs]
        if count:
            # A view: patch i is frames [i * hop, i * hop + patch_size).
            windows = np.lib.stride_tricks.sliding_window_view(
                bands, recipe.patch_size, axis=0)[:: recipe.patch_hop][:count]
            for start in range(0, count, BATCH_SIZE):
                # windows are [patch, bands, frames]: the network wants [patch, 1, frames, bands].
                batch = np.ascontiguousarray(
                    windows[start : start + BATCH_SIZE].transpose(0, 2, 1)[:, None])
                real = batch.shape[0]
                if recipe.fixed_batch and real < BATCH_SIZE:
                    padding = np.zeros((BATCH_SIZE - real, *batch.shape[1:]), dtype=np.float32)
                    batch = np.concatenate([batch, padding])
                for index, values in enumerate(self._network(batch)):
                    results[index].append(values.reshape(batch.shape[0], -1)[:real])
        stacked = [np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
                   for parts in results]
        return BackboneOutputs(stacked[0], stacked[1] if len(stacked) > 1 else None)


Network = Callable[[np.ndarray], list[np.ndarray]]


def network(graph_path: Path, input_name: str, output_names: list[str]) -> Network:
    """A loaded network on its engine: a batch in, the named outputs out, in order."""
    if engine_of(graph_path) == "onnx":
        from nomarr_pipeline.ml.onnx_engine import OnnxNetwork

        return OnnxNetwork(graph_path, input_name, output_names)
    import essentia
    import essentia.standard as es

    predict = es.TensorflowPredict(graphFilename=str(graph_path), inputs=[input_name],
                                   outputs=output_names)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        pool = essentia.Pool()
        pool.set(input_name, batch)
        out: Any = predict(pool)
        return [np.asarray(out[name], dtype=np.float32) for name in output_names]

    return run
