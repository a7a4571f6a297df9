"""Percentiles through the real SQLite histogram query, against numpy on adversarial data."""

from __future__ import annotations

import pytest

from nomarr_pipeline.calibration.histogram import DEFAULT_SPEC, HistogramSpec, derive_percentiles
from nomarr_pipeline.store import Store
from nomarr_pipeline_tests.calibration.binning import (
    adversarial_datasets,
    label_histogram,
    reference_histogram,
)
from nomarr_pipeline_tests.calibration.conftest import populate
from nomarr_pipeline_tests.calibration.test_histogram import assert_matches_numpy

MODEL = "effnet-discogs-effnet-1"
HEAD = "accuracy"
DATASETS = adversarial_datasets(with_bool=False)


@pytest.mark.parametrize(
    "spec", [DEFAULT_SPEC, HistogramSpec(-1.0, 2.0, 3000)], ids=["default", "wide"]
)
def test_store_histogram_percentiles_match_numpy(sqlite_store: Store, spec: HistogramSpec) -> None:
    populate(sqlite_store, {(MODEL, HEAD): DATASETS})
    for name, values in DATASETS.items():
        hist = label_histogram(sqlite_store, MODEL, HEAD, name, spec.lo, spec.hi, spec.bins)
        assert hist == reference_histogram(values, spec), name
        assert_matches_numpy(values, spec, derive_percentiles(hist, spec))


def test_unknown_label_has_no_values(sqlite_store: Store) -> None:
    hist = label_histogram(sqlite_store, MODEL, HEAD, "nothing", 0.0, 1.0, 10_000)
    assert derive_percentiles(hist).n == 0
