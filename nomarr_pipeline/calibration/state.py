"""``calibration_state`` (the calibration *in force* per (model_key, head_name, label)) and
``calibration_history`` (one document per computation, adopted or not) documents.

Drift tolerance (docs/ARCHITECTURE.md §6): the p5/p95 in force change only on a first
computation, a new head version or histogram spec, or when ``|Δp5|`` or ``|Δp95|`` reaches
``drift_tolerance`` (``0`` adopts every computation). ``n``, the counts, the timestamps and
``computed_p5``/``computed_p95`` always update, so ``n`` can describe a newer computation
than the p5/p95 in force, and tiny drift leaves the library-wide ``calibration_hash`` put.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.store import Doc

DEFAULT_DRIFT_TOLERANCE = 0.005

# Percentiles are bin edges, so a drift of exactly k bins can come out a few ulps short of
# the tolerance in floating point; this slack keeps "moved by >= tolerance" meaning that.
_FLOAT_SLACK = 1e-12


def calibration_key(model_key: str, head_name: str, label: str) -> str:
    """Identity of a calibration (docs/ARCHITECTURE.md §6): labels of different heads and
    backbones never collide."""
    return f"{model_key}:{head_name}:{label}"


def calibration_def_hash(model_key: str, head_name: str, version: int | str) -> str:
    """MD5 of (model_key, head_name, version), Nomarr's calibration definition identity."""
    return hashlib.md5(f"{model_key}:{head_name}:{version}".encode()).hexdigest()


# ArangoDB document keys allow letters, digits and _-:.@()+,=;$!*'% (max 254 bytes); labels
# such as "Hip Hop" or "Folk, World, & Country" need the rest replaced.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-:.@()+,=;$!*']")


def history_key(key: str, snapshot_at: int) -> str:
    """Store-safe ``_key`` of the snapshot of ``key`` at ``snapshot_at``; deterministic, so a
    rerun at the same clock value overwrites its snapshot (the digest keeps apart two labels
    that differ only in unsafe characters)."""
    readable = _UNSAFE_KEY_CHARS.sub("_", key)[:180]
    digest = hashlib.md5(key.encode()).hexdigest()[:8]
    return f"{readable}.{digest}@{snapshot_at}"


def _drifted(previous: float, current: float, tolerance: float) -> bool:
    return abs(current - previous) >= tolerance - _FLOAT_SLACK


def should_adopt(
    previous: Mapping[str, Any] | None,
    *,
    version: int | str,
    spec: HistogramSpec,
    p5: float,
    p95: float,
    drift_tolerance: float,
) -> bool:
    """Whether a fresh computation replaces the p5/p95 in force (module doc)."""
    if drift_tolerance < 0:
        raise ValueError(f"drift_tolerance must be >= 0, got {drift_tolerance}")
    if previous is None or previous.get("p5") is None or previous.get("p95") is None:
        return True
    if previous.get("version") != version:
        return True
    previous_histogram = previous.get("histogram")
    if previous_histogram is None or _spec_of(previous_histogram) != spec:
        return True
    return _drifted(previous["p5"], p5, drift_tolerance) or _drifted(previous["p95"], p95, drift_tolerance)


def _spec_of(histogram: Mapping[str, Any]) -> HistogramSpec | None:
    try:
        return HistogramSpec.from_doc(histogram)
    except (KeyError, TypeError, ValueError):
        return None


def state_doc(
    model_key: str, head_name: str, label: str, version: int, spec: HistogramSpec, result: PercentileResult
) -> Doc:
    """The calibration fields of a state document, with ``result``'s p5/p95 in force."""
    return {
        "_key": calibration_key(model_key, head_name, label),
        "model_key": model_key,
        "head_name": head_name,
        "label": label,
        "calibration_def_hash": calibration_def_hash(model_key, head_name, version),
        "version": version,
        "histogram": spec.to_doc(),
        **asdict(result),  # p5, p95, n, underflow_count, overflow_count
        "computed_p5": result.p5,
        "computed_p95": result.p95,
    }


def compute_state(
    previous: Mapping[str, Any] | None,
    *,
    model_key: str,
    head_name: str,
    label: str,
    version: int,
    spec: HistogramSpec,
    result: PercentileResult,
    now_ms: int,
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
    previous_snapshot: Mapping[str, Any] | None = None,
) -> tuple[Doc, Doc]:
    """The new state document and this computation's history snapshot, its deltas against
    ``previous_snapshot`` (the newest history document; ``None`` when there is none)."""
    key = calibration_key(model_key, head_name, label)
    if result.p5 is None or result.p95 is None:
        raise ValueError(f"no values for {key}: a label with n == 0 gets no calibration state")
    adopt = should_adopt(
        previous, version=version, spec=spec, p5=result.p5, p95=result.p95, drift_tolerance=drift_tolerance
    )
    state: Doc = {
        **state_doc(model_key, head_name, label, version, spec, result),
        "adopted_at": now_ms,
        "imported": False,
        "imported_at": None,
        "created_at": now_ms,
        "updated_at": now_ms,
        "last_computation_at": now_ms,
    }
    if previous is not None:
        state["created_at"] = previous.get("created_at") or now_ms
        if not adopt:
            # Keep the calibration in force and where it came from (e.g. an imported package).
            state["p5"] = previous["p5"]
            state["p95"] = previous["p95"]
            state["adopted_at"] = previous.get("adopted_at") or previous.get("updated_at")
            state["imported"] = bool(previous.get("imported", False))
            state["imported_at"] = previous.get("imported_at")

    snapshot = previous_snapshot or {}
    history: Doc = {
        "_key": history_key(key, now_ms),
        "calibration_key": key,
        "snapshot_at": now_ms,
        **asdict(result),
        "p5_delta": _delta(snapshot.get("p5"), result.p5),
        "p95_delta": _delta(snapshot.get("p95"), result.p95),
        "n_delta": None if snapshot.get("n") is None else result.n - int(snapshot["n"]),
        "adopted": adopt,
    }
    return state, history


def _delta(previous: float | None, current: float) -> float | None:
    return None if previous is None else current - float(previous)


def usable_percentiles(p5: float | None, p95: float | None) -> bool:
    """The one rule for whether a calibration can be applied (else it would divide by zero)."""
    return p5 is not None and p95 is not None and p95 > p5


def is_usable(state: Mapping[str, Any]) -> bool:
    """Whether a ``calibration_state`` document can be applied (:func:`usable_percentiles`)."""
    return usable_percentiles(state.get("p5"), state.get("p95"))


def has_usable_calibration(states: Iterable[Mapping[str, Any]]) -> bool:
    """The gate for mood tiers and raw scores: any calibration that can be applied."""
    return any(is_usable(state) for state in states)
