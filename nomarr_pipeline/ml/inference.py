"""Inference for one file: decode once, one pass per backbone, every head pooled. Each network
runs on its engine (essentia-tensorflow for a ``.pb``, ONNX Runtime for an ``.onnx``).

Runs inside a worker process (:mod:`nomarr_pipeline.ml.workers`): Essentia is imported lazily
so that the orchestrating process never loads TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nomarr_pipeline.ml.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from nomarr_pipeline.ml.backbone_pass import RECIPES, BackboneOutputs, BackbonePass, network
from nomarr_pipeline.ml.discovery import Backbone, Head
from nomarr_pipeline.ml.pooling import NonFiniteOutputError, pool_patches

# Seconds of audio one analysis patch covers (patch frames × 256-sample hop at 16 kHz);
# shorter audio gives zero patches.
PATCH_SECONDS: dict[str, float] = {"effnet": 2.05, "musicnn": 2.99, "vggish": 0.96}

Predictor = Callable[[np.ndarray], Any]
BackbonePredictor = Callable[[np.ndarray], BackboneOutputs]


class AnalysisError(RuntimeError):
    """This file cannot be analysed by these models; the message says why."""


class ModelFault(RuntimeError):
    """The model, not the audio, failed; the message is the same for every file it fails on."""


@dataclass(frozen=True)
class HeadOutcome:
    """Pooled values for one head on one file, or why there are none. ``model_fault``, when the
    model is at fault, is the same text on every file: a broken model is told from a bad file."""

    partition_key: str
    values: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    patches: int = 0
    error: str | None = None
    model_fault: str | None = None


@dataclass(frozen=True)
class FileAnalysis:
    """Every head's outcome on one file; ``file_error`` when the audio itself cannot be
    decoded (a failure of the file, whatever the heads)."""

    outcomes: tuple[HeadOutcome, ...]
    duration_s: float
    file_error: str | None = None


def _essentia() -> Any:
    import essentia
    import essentia.standard as es

    # Essentia logs a warning per inner network run; thousands per file drown real errors.
    essentia.log.infoActive = False
    essentia.log.warningActive = False
    return es


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


class ModelSession:
    """The models one worker has loaded; each backbone and head is loaded once, on first use."""

    def __init__(self) -> None:
        self._backbones: dict[Path, BackbonePredictor] = {}
        self._heads: dict[Path, Predictor] = {}
        # Models that failed to load: they fail every later file at once, with the same fault.
        self._unloadable: dict[Path, ModelFault] = {}

    def _load(self, path: Path, make: Callable[[], Any]) -> Any:
        if path in self._unloadable:
            raise self._unloadable[path]
        try:
            return make()
        except RuntimeError as exc:
            fault = ModelFault(f"cannot load {path.name}: {_describe(exc)}")
            self._unloadable[path] = fault
            raise fault from exc

    def _backbone(self, backbone: Backbone) -> BackbonePredictor:
        predictor = self._backbones.get(backbone.graph_path)
        if predictor is None:
            _essentia()  # logging settings before the first algorithm is made
            one_pass = backbone.family in RECIPES
            predictor = self._load(
                backbone.graph_path,
                lambda: BackbonePass(backbone) if one_pass else _embeddings_only(backbone),
            )
            self._backbones[backbone.graph_path] = predictor
        return predictor

    def _head(self, head: Head) -> Predictor:
        predictor = self._heads.get(head.graph_path)
        if predictor is None:
            if head.engine == "onnx":
                predictor = self._load(head.graph_path, lambda: _first_output(
                    network(head.graph_path, head.input_node, [head.output_node])))
            else:
                predictor = self._load(head.graph_path, lambda: _essentia().TensorflowPredict2D(
                    graphFilename=str(head.graph_path), input=head.input_node,
                    output=head.output_node,
                ))
            self._heads[head.graph_path] = predictor
        return predictor

    def run_backbone(self, backbone: Backbone, audio: np.ndarray) -> BackboneOutputs:
        """Embeddings (and the model's own predictions) from one pass; :class:`AnalysisError`
        when there is no patch, :class:`ModelFault` when the backbone fails."""
        try:
            outputs = self._backbone(backbone)(audio)
        except ModelFault as fault:
            raise ModelFault(f"backbone {backbone.name}: {fault}") from fault
        except RuntimeError as exc:
            raise ModelFault(f"backbone {backbone.name} failed: {_describe(exc)}") from exc
        patches = outputs.embeddings
        if patches.size == 0:
            seconds = audio.size / SAMPLE_RATE
            needed = PATCH_SECONDS.get(backbone.family)
            need = f"; it needs at least {needed:.2f} s" if needed else ""
            raise AnalysisError(
                f"audio too short: {seconds:.2f} s gives no analysis patch for the "
                f"{backbone.family} backbone {backbone.name}{need}"
            )
        width = patches.shape[1] if patches.ndim == 2 else None
        if width != backbone.embedding_size:
            raise ModelFault(
                f"backbone {backbone.name} outputs embeddings of shape {_shape(patches)}, its JSON "
                f"says [patches, {backbone.embedding_size}]"
            )
        if not np.all(np.isfinite(patches)):
            raise ModelFault(f"backbone {backbone.name} produced NaN/infinite embeddings")
        return outputs

    def head_outcome(self, head: Head, outputs: BackboneOutputs) -> HeadOutcome:
        try:
            if head.autotagging:
                if outputs.predictions is None:
                    raise ModelFault(f"backbone {head.backbone.name} gave no predictions")
                raw = np.asarray(outputs.predictions)
            else:
                raw = np.asarray(self._head(head)(outputs.embeddings))
            if raw.ndim != 2 or raw.shape[1] != len(head.labels):
                raise ModelFault(
                    f"it outputs {_shape(raw)} values, but its JSON lists {len(head.labels)} "
                    f"labels: [patches, {len(head.labels)}] expected"
                )
            pooled = pool_patches(raw, len(head.labels))
        except NonFiniteOutputError as exc:
            # A file may drive a model to NaN; the same model on every file is broken.
            return HeadOutcome(head.partition_key, error=f"head {head.partition_key}: {exc}; nothing stored",
                               model_fault="it outputs NaN/infinite values")
        except ModelFault as fault:
            return HeadOutcome(head.partition_key, error=f"head {head.partition_key}: {fault}",
                               model_fault=str(fault))
        except RuntimeError as exc:
            fault = f"it failed: {_describe(exc)}"
            return HeadOutcome(head.partition_key, error=f"head {head.partition_key} {fault}",
                               model_fault=fault)
        except ValueError as exc:
            return HeadOutcome(head.partition_key,
                               error=f"head {head.partition_key} failed: {_describe(exc)}")
        return HeadOutcome(head.partition_key, pooled.values, pooled.stds, pooled.patches)

    def analyze_audio(self, audio: np.ndarray, heads: Sequence[Head]) -> tuple[HeadOutcome, ...]:
        """Each backbone runs once; its embeddings feed every one of its heads."""
        by_backbone: dict[Path, list[Head]] = {}
        for head in heads:
            by_backbone.setdefault(head.backbone.graph_path, []).append(head)
        outcomes: list[HeadOutcome] = []
        for backbone_heads in by_backbone.values():
            backbone = backbone_heads[0].backbone
            try:
                outputs = self.run_backbone(backbone, audio)
            except (AnalysisError, ModelFault) as exc:
                fault = str(exc) if isinstance(exc, ModelFault) else None
                outcomes.extend(HeadOutcome(h.partition_key, error=str(exc), model_fault=fault)
                                for h in backbone_heads)
                continue
            outcomes.extend(self.head_outcome(head, outputs) for head in backbone_heads)
        return tuple(outcomes)

    def analyze_file(self, path: Path, heads: Sequence[Head]) -> FileAnalysis:
        """Decode ``path`` once and run ``heads`` on it; errors are reported, never raised."""
        started = time.perf_counter()
        file_error = None
        try:
            audio = load_audio(path)
        except AudioDecodeError as exc:
            file_error = f"cannot decode audio: {exc}"
            outcomes = tuple(HeadOutcome(h.partition_key, error=file_error) for h in heads)
        else:
            outcomes = self.analyze_audio(audio, heads)
        return FileAnalysis(outcomes, time.perf_counter() - started, file_error)


def _first_output(run: Callable[[np.ndarray], list[np.ndarray]]) -> Predictor:
    return lambda embeddings: run(embeddings)[0]


def _shape(array: np.ndarray) -> str:
    """An output's shape without its number of patches (which differs from file to file)."""
    return "[" + ", ".join(["patches", *(str(d) for d in array.shape[1:])]) + "]"


def _embeddings_only(backbone: Backbone) -> BackbonePredictor:
    """A backbone family without a one-pass recipe: Essentia's own algorithm, embeddings only."""
    algorithm = getattr(_essentia(), backbone.algorithm)(
        graphFilename=str(backbone.graph_path), input=backbone.input_node,
        output=backbone.embedding_output,
    )

    def run(audio: np.ndarray) -> BackboneOutputs:
        return BackboneOutputs(np.asarray(algorithm(audio), dtype=np.float32), None)

    return run
