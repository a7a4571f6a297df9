"""Essentia inference for one file: decode once, one pass per backbone, every head pooled.

An auto-tagging model's own head takes its values from the same backbone pass as the
embeddings (:mod:`nomarr_pipeline.ml.backbone_pass`). Runs inside a worker process (see
:mod:`nomarr_pipeline.ml.workers`): Essentia is imported lazily so that the orchestrating
process never loads TensorFlow.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nomarr_pipeline.ml.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from nomarr_pipeline.ml.backbone_pass import RECIPES, BackboneOutputs, BackbonePass
from nomarr_pipeline.ml.discovery import Backbone, Head
from nomarr_pipeline.ml.pooling import NonFiniteOutputError, pool_patches

# Seconds of audio one analysis patch covers (patch frames × 256-sample hop at 16 kHz);
# shorter audio gives zero patches.
PATCH_SECONDS: dict[str, float] = {"effnet": 2.05, "musicnn": 2.99, "vggish": 0.96}

Predictor = Callable[[np.ndarray], Any]
BackbonePredictor = Callable[[np.ndarray], BackboneOutputs]


class AnalysisError(RuntimeError):
    """This file cannot be analysed by these models; the message says why."""


@dataclass(frozen=True)
class HeadOutcome:
    """Pooled values for one head on one file, or why there are none."""

    partition_key: str
    values: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    patches: int = 0
    error: str | None = None


@dataclass(frozen=True)
class FileAnalysis:
    outcomes: tuple[HeadOutcome, ...]
    duration_s: float
    backbone_passes: dict[str, int] = field(default_factory=dict)


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
        self.backbone_passes: Counter[str] = Counter()

    # ---- loading -------------------------------------------------------------------
    def _backbone(self, backbone: Backbone) -> BackbonePredictor:
        predictor = self._backbones.get(backbone.graph_path)
        if predictor is None:
            _essentia()  # logging settings before the first algorithm is made
            one_pass = backbone.family in RECIPES
            predictor = BackbonePass(backbone) if one_pass else _embeddings_only(backbone)
            self._backbones[backbone.graph_path] = predictor
        return predictor

    def _head(self, head: Head) -> Predictor:
        predictor = self._heads.get(head.graph_path)
        if predictor is None:
            predictor = _essentia().TensorflowPredict2D(
                graphFilename=str(head.graph_path), input=head.input_node,
                output=head.output_node,
            )
            self._heads[head.graph_path] = predictor
        return predictor

    # ---- running -------------------------------------------------------------------
    def run_backbone(self, backbone: Backbone, audio: np.ndarray) -> BackboneOutputs:
        """Embeddings ``[patches, embedding_size]`` (and the model's own predictions) from
        one pass; :class:`AnalysisError` when there is no patch."""
        self.backbone_passes[backbone.name] += 1
        try:
            outputs = self._backbone(backbone)(audio)
        except RuntimeError as exc:
            raise AnalysisError(f"backbone {backbone.name} failed: {_describe(exc)}") from exc
        patches = outputs.embeddings
        if patches.size == 0:
            seconds = audio.size / SAMPLE_RATE
            needed = PATCH_SECONDS.get(backbone.family)
            need = f"; it needs at least {needed:.2f} s" if needed else ""
            raise AnalysisError(
                f"audio too short: {seconds:.2f} s gives no analysis patch for the "
                f"{backbone.family} backbone {backbone.name}{need}"
            )
        if patches.ndim != 2 or patches.shape[1] != backbone.embedding_size:
            raise AnalysisError(
                f"backbone {backbone.name} returned shape {patches.shape}, expected "
                f"[patches, {backbone.embedding_size}]"
            )
        if not np.all(np.isfinite(patches)):
            raise AnalysisError(f"backbone {backbone.name} produced NaN/infinite embeddings")
        return outputs

    def head_outcome(self, head: Head, outputs: BackboneOutputs) -> HeadOutcome:
        try:
            if head.autotagging:
                if outputs.predictions is None:
                    raise ValueError(f"backbone {head.backbone.name} gave no predictions")
                raw = outputs.predictions
            else:
                raw = self._head(head)(outputs.embeddings)
            pooled = pool_patches(np.asarray(raw), len(head.labels))
        except NonFiniteOutputError as exc:
            return HeadOutcome(head.partition_key,
                               error=f"head {head.partition_key}: {exc}; nothing stored")
        except (RuntimeError, ValueError) as exc:
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
            except AnalysisError as exc:
                outcomes.extend(HeadOutcome(h.partition_key, error=str(exc))
                                for h in backbone_heads)
                continue
            outcomes.extend(self.head_outcome(head, outputs) for head in backbone_heads)
        return tuple(outcomes)

    def analyze_file(self, path: Path, heads: Sequence[Head]) -> FileAnalysis:
        """Decode ``path`` once and run ``heads`` on it; errors are reported, never raised."""
        started = time.perf_counter()
        passes_before = Counter(self.backbone_passes)
        try:
            audio = load_audio(path)
        except AudioDecodeError as exc:
            outcomes = tuple(HeadOutcome(h.partition_key, error=f"cannot decode audio: {exc}")
                             for h in heads)
        else:
            outcomes = self.analyze_audio(audio, heads)
        passes = self.backbone_passes - passes_before
        return FileAnalysis(outcomes, time.perf_counter() - started, dict(passes))


def _embeddings_only(backbone: Backbone) -> BackbonePredictor:
    """A backbone family without a one-pass recipe: Essentia's own algorithm, embeddings only."""
    algorithm = getattr(_essentia(), backbone.algorithm)(
        graphFilename=str(backbone.graph_path), input=backbone.input_node,
        output=backbone.embedding_output,
    )

    def run(audio: np.ndarray) -> BackboneOutputs:
        return BackboneOutputs(np.asarray(algorithm(audio), dtype=np.float32), None)

    return run
