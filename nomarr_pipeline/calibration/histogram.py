"""Histogram specs and p5/p95 from a sparse DB histogram (docs/ARCHITECTURE.md §6).

The store returns only the non-empty bins and counts out-of-range values apart, so memory
depends on the number of bins only. Percentile rule (Nomarr's): walk the bins in order with
a running count that starts at the underflow count and report the *lower edge* of the first
bin whose count reaches ``p * n``. That bin holds the ``ceil(p * n)``-th smallest value, so
the estimate ``e`` and ``np.percentile(values, 100 * p, method="inverted_cdf")`` ``q`` satisfy
``e <= q < e + bin_width``. A target reached by the underflow alone is reported as ``lo``, one
beyond the in-range bins (in the overflow) as ``hi``. Unlike Nomarr, out-of-range values are
never also clamped into the edge bins (it counted them twice). ``n == 0`` gives
``p5 = p95 = None``: such a label gets no calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nomarr_pipeline.ml.discovery import head_partition_key
from nomarr_pipeline.store.protocol import SparseHistogram

DEFAULT_BINS = 10_000


@dataclass(frozen=True)
class HistogramSpec:
    """Uniform binning of ``[lo, hi]`` into ``bins`` bins (seed: 10,000 bins on [0, 1])."""

    lo: float = 0.0
    hi: float = 1.0
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, int):
            raise ValueError(f"histogram bins must be an integer, got {self.bins!r}")
        if self.bins < 1:
            raise ValueError(f"histogram bins must be >= 1, got {self.bins}")
        for name, bound in (("lo", self.lo), ("hi", self.hi)):
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise ValueError(f"histogram {name} must be a number, got {bound!r}")
            if not math.isfinite(bound):
                raise ValueError(f"histogram {name} must be finite, got {bound!r}")
        if not self.hi > self.lo:
            raise ValueError(f"histogram needs hi > lo, got lo={self.lo} hi={self.hi}")
        # Normalise ints to floats so docs and hashes never depend on how a bound was typed.
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def lower_edge(self, bin_index: int) -> float:
        """``lo + bin_index * bin_width``, computed as one division so edges such as 0.05 come
        out as the decimal a reader expects rather than 0.05000000000000001."""
        return self.lo + (self.hi - self.lo) * bin_index / self.bins

    def to_doc(self) -> dict[str, Any]:
        """Nomarr's ``histogram`` sub-document."""
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins, "bin_width": self.bin_width}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> HistogramSpec:
        """Inverse of ``to_doc``; ``bin_width`` is derived, a stored one is only checked."""
        spec = cls(lo=doc["lo"], hi=doc["hi"], bins=doc["bins"])
        stored_width = doc.get("bin_width")
        if stored_width is not None and not math.isclose(
            float(stored_width), spec.bin_width, rel_tol=1e-9, abs_tol=0.0
        ):
            raise ValueError(
                f"histogram bin_width {stored_width!r} does not match (hi - lo) / bins = {spec.bin_width!r}"
            )
        return spec


DEFAULT_SPEC = HistogramSpec()
# Regression heads (arousal/valence of deam, emomusic, muse) report on a 1..9 scale, others
# (approachability/engagement regression) on 0..1; this range holds both at 0.001 resolution.
REGRESSION_SPEC = HistogramSpec(lo=-1.0, hi=10.0, bins=11_000)

# Spec overrides: keys are a partition key "{model_key}:{head_name}" (one backbone's head) or
# a bare head_name (that head on every backbone). The partition key wins.
SpecOverrides = Mapping[str, HistogramSpec]


def spec_for(
    model_key: str,
    head_name: str,
    overrides: SpecOverrides | None = None,
    default: HistogramSpec = DEFAULT_SPEC,
) -> HistogramSpec:
    """The histogram spec of one head: its override if any, otherwise ``default``."""
    if overrides:
        partition_key = head_partition_key(model_key, head_name)
        if partition_key in overrides:
            return overrides[partition_key]
        if head_name in overrides:
            return overrides[head_name]
    return default


@dataclass(frozen=True)
class PercentileResult:
    """p5/p95 (Nomarr's names, whatever the targets) of one (head, label); ``None`` iff ``n == 0``."""

    p5: float | None
    p95: float | None
    n: int
    underflow_count: int
    overflow_count: int

    @property
    def has_values(self) -> bool:
        return self.n > 0


def derive_percentiles(
    hist: SparseHistogram,
    spec: HistogramSpec = DEFAULT_SPEC,
    p_low: float = 0.05,
    p_high: float = 0.95,
) -> PercentileResult:
    """p5/p95 from a sparse histogram by Nomarr's cumulative lower-edge rule (module doc)."""
    if not 0.0 < p_low < p_high < 1.0:
        raise ValueError(f"need 0 < p_low < p_high < 1, got p_low={p_low} p_high={p_high}")
    bins = sorted(hist.bins)
    for bin_index, count in bins:
        if not 0 <= bin_index < spec.bins:
            raise ValueError(f"bin index {bin_index} outside 0..{spec.bins - 1} of {spec}")
        if count < 0:
            raise ValueError(f"negative count {count} in bin {bin_index}")
    if hist.underflow_count < 0 or hist.overflow_count < 0:
        raise ValueError("negative underflow/overflow count")

    n = sum(count for _, count in bins) + hist.underflow_count + hist.overflow_count
    if n == 0:
        return PercentileResult(None, None, 0, 0, 0)

    # Float targets on purpose: numpy's inverted_cdf compares against the same float p * n.
    low_target = p_low * n
    high_target = p_high * n
    p5 = spec.lo if hist.underflow_count >= low_target else None
    p95 = spec.lo if hist.underflow_count >= high_target else None
    cumulative = hist.underflow_count
    for bin_index, count in bins:
        if p95 is not None:
            break
        cumulative += count
        if p5 is None and cumulative >= low_target:
            p5 = spec.lower_edge(bin_index)
        if p95 is None and cumulative >= high_target:
            p95 = spec.lower_edge(bin_index)
    # Targets beyond the in-range bins lie in the overflow, above hi.
    return PercentileResult(
        p5=spec.hi if p5 is None else p5,
        p95=spec.hi if p95 is None else p95,
        n=n,
        underflow_count=hist.underflow_count,
        overflow_count=hist.overflow_count,
    )


def out_of_range_share(result: PercentileResult) -> float:
    """Share of values outside the histogram range."""
    if result.n == 0:
        return 0.0
    return (result.underflow_count + result.overflow_count) / result.n
