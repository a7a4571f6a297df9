"""Calibration generation: one DB histogram per (head, label) -> ``calibration_state``.

Per head: the newest history snapshot and state of every label (one query each), then per
label ``store.histograms`` -> ``derive_percentiles`` -> ``compute_state``; all of the head's
states and snapshots are saved in one transaction, so a head is calibrated completely or not
at all. Memory is one label's sparse histogram at a time (a few where a server store runs
label queries at once), never the number of files. A rerun recomputes from the current
``file_tags``: unchanged data keeps its values (zero drift). A label without eligible values
(``n == 0``) gets no state; it is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nomarr_pipeline.calibration.histogram import (
    DEFAULT_SPEC,
    REGRESSION_SPEC,
    HistogramSpec,
    PercentileResult,
    SpecOverrides,
    derive_percentiles,
    out_of_range_share,
    spec_for,
)
from nomarr_pipeline.calibration.state import (
    DEFAULT_DRIFT_TOLERANCE,
    Doc,
    calibration_key,
    compute_state,
    usable_percentiles,
)
from nomarr_pipeline.ml.discovery import Head, head_partition_key
from nomarr_pipeline.store.protocol import SparseHistogram, Store

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
# Above this share of out-of-range values the histogram range should be widened.
OUT_OF_RANGE_WARNING_SHARE = 0.05


@dataclass(frozen=True)
class LabelCalibration:
    """One label's outcome. ``p5``/``p95`` are the values in force after this computation."""

    label: str
    n: int
    underflow_count: int
    overflow_count: int
    p5: float | None
    p95: float | None
    adopted: bool
    p5_delta: float | None = None  # against the previous snapshot; None for the first
    p95_delta: float | None = None

    @property
    def usable(self) -> bool:
        return usable_percentiles(self.p5, self.p95)


@dataclass
class HeadCalibrationReport:
    model_key: str
    head_name: str
    version: int
    spec: HistogramSpec
    labels: list[LabelCalibration] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)  # n == 0: no state written
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def partition_key(self) -> str:
        return head_partition_key(self.model_key, self.head_name)

    @property
    def changed(self) -> bool:
        """Whether a calibration in force changed (and with it the expected hash)."""
        return any(label.adopted for label in self.labels)

    @property
    def n(self) -> int:
        return sum(label.n for label in self.labels)


def head_spec(head: Head, overrides: SpecOverrides | None) -> HistogramSpec:
    """The head's override if any, else the regression range for regression heads (their
    outputs are not probabilities), else the default."""
    fallback = REGRESSION_SPEC if str(head.kind) == "regression" else DEFAULT_SPEC
    return spec_for(head.model_key, head.head_name, overrides, fallback)


def clock_ms() -> int:
    """Milliseconds since the epoch, the store's timestamp unit."""
    return time.time_ns() // 1_000_000


def calibrate_head(
    store: Store,
    head: Head,
    *,
    specs: SpecOverrides | None = None,
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
    now: int | None = None,
    keep_histograms: bool = False,
) -> tuple[HeadCalibrationReport, dict[str, SparseHistogram]]:
    """Calibrate every label of one head (its ``classes``, else those the store holds) in one
    transaction; ``keep_histograms`` returns the sparse histograms too (for plots)."""
    started = time.perf_counter()
    spec = head_spec(head, specs)
    timestamp = now if now is not None else clock_ms()
    report = HeadCalibrationReport(head.model_key, head.head_name, head.version, spec)
    labels = list(head.labels) or store.labels_of_head(head.model_key, head.head_name)
    histograms: dict[str, SparseHistogram] = {}
    states: list[Doc] = []
    history: list[Doc] = []
    keys = {label: calibration_key(head.model_key, head.head_name, label) for label in labels}
    previous_snapshots = store.recent_history(list(keys.values()))  # one query for the head
    previous_states = store.get_calibrations(list(keys.values()))  # and one for its states
    for label, hist in store.histograms(head.model_key, head.head_name, labels, spec.lo, spec.hi, spec.bins):
        result = derive_percentiles(hist, spec)
        if keep_histograms:
            histograms[label] = hist
        del hist  # only the bins of the labels being queried are alive at a time
        if not result.has_values:
            report.empty_labels.append(label)
            continue
        key = keys[label]
        state, snapshot = compute_state(
            previous_states.get(key),
            model_key=head.model_key,
            head_name=head.head_name,
            label=label,
            version=head.version,
            spec=spec,
            result=result,
            now_ms=timestamp,
            drift_tolerance=drift_tolerance,
            previous_snapshot=previous_snapshots.get(key, [None])[0],
        )
        states.append(state)
        history.append(snapshot)
        report.labels.append(_label_report(label, result, state, snapshot))
        _warn_if_out_of_range(report, label, result)
    if states:
        store.save_calibrations(states, history)
    report.seconds = time.perf_counter() - started
    return report, histograms


def _label_report(
    label: str, result: PercentileResult, state: Mapping[str, Any], snapshot: Doc
) -> LabelCalibration:
    return LabelCalibration(
        label=label,
        n=result.n,
        underflow_count=result.underflow_count,
        overflow_count=result.overflow_count,
        p5=state["p5"],
        p95=state["p95"],
        adopted=bool(snapshot["adopted"]),
        p5_delta=snapshot["p5_delta"],
        p95_delta=snapshot["p95_delta"],
    )


def _warn_if_out_of_range(report: HeadCalibrationReport, label: str, result: PercentileResult) -> None:
    share = out_of_range_share(result)
    if share > OUT_OF_RANGE_WARNING_SHARE:
        lo, hi = report.spec.lo, report.spec.hi
        message = (
            f"{report.partition_key}:{label}: {result.underflow_count} of {result.n} values are "
            f"below {lo} and {result.overflow_count} above {hi} ({share:.1%}), the range its "
            f"percentiles are counted in, so p5/p95 are clipped there. Set NOMARR_HISTOGRAM_OVERRIDES "
            f'to {{"{report.partition_key}": {{"lo": <lowest value>, "hi": <highest value>}}}} '
            "(the calibration resource's histogram_overrides) and calibrate again"
        )
        log.warning(message)
        report.warnings.append(message)


def calibrate_heads(
    store: Store,
    heads: Sequence[Head],
    *,
    specs: SpecOverrides | None = None,
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
    now_ms: int | None = None,
    stop_on_error: bool = False,
) -> list[HeadCalibrationReport]:
    """Calibrate each head in turn; a head that fails keeps its previous calibration and is
    reported with ``error`` while the others go on, unless ``stop_on_error``."""
    reports: list[HeadCalibrationReport] = []
    for head in heads:
        try:
            report, _ = calibrate_head(store, head, specs=specs, drift_tolerance=drift_tolerance, now=now_ms)
        except Exception as error:
            if stop_on_error:
                raise
            log.exception("calibration of %s:%s failed", head.model_key, head.head_name)
            report = HeadCalibrationReport(
                head.model_key, head.head_name, head.version, head_spec(head, specs)
            )
            report.error = f"{type(error).__name__}: {error}"
        reports.append(report)
    return reports


def calibration_progress(
    store: Store, heads: Sequence[Head], now_ms: int | None = None, recent_ms: int = DAY_MS
) -> dict[str, Any]:
    """A head is calibrated when a state of its current version was updated within
    ``recent_ms``; ``last_updated`` is the newest ``updated_at`` of these heads' states."""
    current = now_ms if now_ms is not None else clock_ms()
    threshold = current - recent_ms
    versions = {(head.model_key, head.head_name): head.version for head in heads}
    calibrated: set[tuple[str, str]] = set()
    last_updated: int | None = None
    for state in store.list_calibrations():
        head_id = (state.get("model_key"), state.get("head_name"))
        if head_id not in versions:
            continue
        updated_at = state.get("updated_at")
        if updated_at is None:
            continue
        last_updated = updated_at if last_updated is None else max(last_updated, updated_at)
        if updated_at >= threshold and state.get("version") == versions[head_id]:
            calibrated.add(head_id)
    total = len(versions)
    return {
        "total_heads": total,
        "calibrated_heads": len(calibrated),
        "remaining_heads": total - len(calibrated),
        "last_updated": last_updated,
    }
