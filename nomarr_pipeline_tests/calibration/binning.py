"""Reference binning for tests: what the store's histogram query must return."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from nomarr_pipeline.calibration.histogram import HistogramSpec
from nomarr_pipeline.store.protocol import SparseHistogram, Store


def label_histogram(
    store: Store, model_key: str, head_name: str, label: str, lo: float, hi: float, bins: int
) -> SparseHistogram:
    """One label's histogram as the store computes it for calibration."""
    ((_, histogram),) = store.histograms(model_key, head_name, [label], lo, hi, bins)
    return histogram


def eligible(values: Iterable[object]) -> list[float]:
    """Finite numbers only (the store's eligibility rule); bools, strings, NaN, inf are not."""
    return [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def reference_histogram(values: Iterable[object], spec: HistogramSpec) -> SparseHistogram:
    counts: Counter[int] = Counter()
    underflow = overflow = 0
    for value in eligible(values):
        if value < spec.lo:
            underflow += 1
        elif value > spec.hi:
            overflow += 1
        else:
            # Same arithmetic as the SQLite query: multiply by bins / (hi - lo), never divide
            # by bin_width, so a value on an edge (0.3) starts its bin instead of ending one.
            counts[min(int((value - spec.lo) * spec.bins / (spec.hi - spec.lo)), spec.bins - 1)] += 1
    return SparseHistogram(sorted(counts.items()), underflow, overflow)


def adversarial_datasets(*, with_bool: bool = True) -> dict[str, list[object]]:
    """Value sets that stress the percentile rule; some hold values the store must ignore.

    ``with_bool=False`` leaves out ``True``: SQLite has no boolean type and stores it as the
    integer 1, so the SQLite engine counts it as a value (ArangoDB's IS_NUMBER does not).
    The tagger never writes booleans as values.
    """
    rng = __import__("numpy").random.default_rng(20260116)
    uniform = rng.uniform(0.0, 1.0, 5000).tolist()
    bimodal = [*rng.normal(0.1, 0.02, 3000).clip(0, 1), *rng.normal(0.9, 0.02, 2000).clip(0, 1)]
    edges = [i / 10_000 for i in range(0, 10_001, 37)]  # exactly on bin edges, incl. 1.0
    return {
        "uniform": uniform,
        "bimodal": [float(v) for v in bimodal],
        "all_equal": [0.4242] * 1000,
        "all_zeros": [0.0] * 777,
        "all_ones": [1.0] * 777,
        "bin_edges": edges,
        "out_of_range": [*rng.uniform(-0.5, 0.0, 100), *uniform[:800], *rng.uniform(1.0, 2.0, 100)],
        "mostly_underflow": [*([-1.0] * 960), *uniform[:40]],
        "mostly_overflow": [*uniform[:40], *([3.0] * 960)],
        "ineligible_mixed": [
            *uniform[:500], float("nan"), float("inf"), float("-inf"), "0.5", "abc", None,
            *([True] if with_bool else []),
        ],
        "single": [0.3333],
        "two": [0.2, 0.8],
        "twenty": [i / 20 for i in range(20)],
        "empty": [],
        "only_ineligible": [float("nan"), "0.5"],
    }
