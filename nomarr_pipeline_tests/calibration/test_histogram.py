from __future__ import annotations

import numpy as np
import pytest

from nomarr_pipeline.calibration.histogram import (
    DEFAULT_SPEC,
    HistogramSpec,
    PercentileResult,
    derive_percentiles,
    out_of_range_share,
    spec_for,
)
from nomarr_pipeline.calibration.state import usable_percentiles
from nomarr_pipeline.store.protocol import SparseHistogram
from nomarr_pipeline_tests.calibration.binning import (
    adversarial_datasets,
    eligible,
    reference_histogram,
)


def assert_matches_numpy(values: list[object], spec: HistogramSpec, result: PercentileResult):
    """Estimate e and exact inverted_cdf quantile q (clamped to [lo, hi]): e <= q <= e + w."""
    numbers = eligible(values)
    assert result.n == len(numbers)
    if not numbers:
        assert result.p5 is None and result.p95 is None
        return
    for estimate, percent in ((result.p5, 5), (result.p95, 95)):
        exact = float(np.percentile(numbers, percent, method="inverted_cdf"))
        clamped = min(max(exact, spec.lo), spec.hi)
        assert estimate is not None
        assert estimate <= clamped + 1e-12, (percent, estimate, exact)
        assert clamped - estimate <= spec.bin_width + 1e-12, (percent, estimate, exact)


@pytest.mark.parametrize("name", sorted(adversarial_datasets()))
@pytest.mark.parametrize(
    "spec", [DEFAULT_SPEC, HistogramSpec(-1.0, 2.0, 3000), HistogramSpec(0.0, 1.0, 7)]
)
def test_percentiles_within_one_bin_of_numpy(name: str, spec: HistogramSpec) -> None:
    values = adversarial_datasets()[name]
    result = derive_percentiles(reference_histogram(values, spec), spec)
    assert_matches_numpy(values, spec, result)


def test_spec_defaults_and_doc_round_trip() -> None:
    spec = HistogramSpec()
    assert (spec.lo, spec.hi, spec.bins) == (0.0, 1.0, 10_000)
    assert spec.bin_width == pytest.approx(0.0001)
    assert spec.to_doc() == {"lo": 0.0, "hi": 1.0, "bins": 10_000, "bin_width": spec.bin_width}
    assert HistogramSpec.from_doc(spec.to_doc()) == spec
    assert spec.lower_edge(500) == 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lo": 1.0, "hi": 1.0},
        {"lo": 1.0, "hi": 0.0},
        {"bins": 0},
        {"bins": 2.5},
        {"bins": True},
        {"lo": float("nan")},
        {"hi": float("inf")},
        {"lo": "0"},
    ],
)
def test_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HistogramSpec(**kwargs)


def test_from_doc_rejects_inconsistent_bin_width() -> None:
    with pytest.raises(ValueError, match="bin_width"):
        HistogramSpec.from_doc({"lo": 0.0, "hi": 1.0, "bins": 100, "bin_width": 0.1})


def test_spec_for_prefers_partition_key_over_head_name() -> None:
    wide = HistogramSpec(0.0, 10.0)
    narrow = HistogramSpec(0.0, 2.0)
    overrides = {"deam": wide, "musicnn-msd-musicnn-1:deam": narrow}
    assert spec_for("musicnn-msd-musicnn-1", "deam", overrides) == narrow
    assert spec_for("effnet-discogs-effnet-1", "deam", overrides) == wide
    assert spec_for("effnet-discogs-effnet-1", "mood_happy", overrides) == DEFAULT_SPEC
    assert spec_for("x", "y", None) == DEFAULT_SPEC


def test_seed_rule_on_handmade_histogram() -> None:
    # 100 values: bins 10 (5 values), 20 (85), 30 (10). 5 % of 100 = 5 reached in bin 10;
    # 95 reached in bin 30 (cumulative 90 after bin 20).
    hist = SparseHistogram([(30, 10), (10, 5), (20, 85)], 0, 0)  # unsorted on purpose
    result = derive_percentiles(hist, HistogramSpec(0.0, 1.0, 100))
    assert result == PercentileResult(p5=0.1, p95=0.3, n=100, underflow_count=0, overflow_count=0)
    assert usable_percentiles(result.p5, result.p95) and result.has_values


def test_underflow_counts_before_the_bins_and_overflow_after() -> None:
    spec = HistogramSpec(0.0, 1.0, 100)
    # 10 % below range: p5 is below lo -> lo. 10 % above: p95 is above hi -> hi.
    result = derive_percentiles(SparseHistogram([(50, 80)], 10, 10), spec)
    assert (result.p5, result.p95, result.n) == (0.0, 1.0, 100)
    assert out_of_range_share(result) == pytest.approx(0.2)
    # All underflow: both percentiles clamp to lo, so the calibration is unusable.
    only_under = derive_percentiles(SparseHistogram([], 7, 0), spec)
    assert (only_under.p5, only_under.p95) == (0.0, 0.0)
    assert not usable_percentiles(only_under.p5, only_under.p95)
    only_over = derive_percentiles(SparseHistogram([], 0, 7), spec)
    assert (only_over.p5, only_over.p95) == (1.0, 1.0)
    assert not usable_percentiles(only_over.p5, only_over.p95)


def test_empty_histogram_has_no_percentiles() -> None:
    result = derive_percentiles(SparseHistogram([], 0, 0))
    assert result == PercentileResult(None, None, 0, 0, 0)
    assert not usable_percentiles(result.p5, result.p95) and not result.has_values
    assert out_of_range_share(result) == 0.0


def test_single_value_gives_equal_percentiles_and_is_unusable() -> None:
    result = derive_percentiles(SparseHistogram([(4242, 1)], 0, 0))
    assert result.p5 == result.p95 == pytest.approx(0.4242)
    assert not usable_percentiles(result.p5, result.p95)


@pytest.mark.parametrize("p_low,p_high", [(0.0, 0.9), (0.5, 0.5), (0.9, 0.1), (0.1, 1.0)])
def test_targets_validated(p_low: float, p_high: float) -> None:
    with pytest.raises(ValueError):
        derive_percentiles(SparseHistogram([(1, 1)], 0, 0), p_low=p_low, p_high=p_high)


def test_bins_outside_spec_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        derive_percentiles(SparseHistogram([(10_000, 1)], 0, 0))


def test_custom_targets() -> None:
    hist = SparseHistogram([(i, 1) for i in range(100)], 0, 0)
    result = derive_percentiles(hist, HistogramSpec(0.0, 1.0, 100), p_low=0.25, p_high=0.75)
    assert (result.p5, result.p95) == (0.24, 0.74)
