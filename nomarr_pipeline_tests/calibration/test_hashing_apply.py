from __future__ import annotations

import hashlib
import math

import pytest

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline_tests.calibration.reference import calibrate


def state(key: str, p5: float | None, p95: float | None, version: int | float = 1) -> dict:
    return {"_key": key, "version": version, "p5": p5, "p95": p95, "n": 10}


def test_empty_set_hashes_the_empty_string() -> None:
    assert expected_calibration_hash([]) == hashlib.md5(b"").hexdigest()


def test_hash_is_order_independent_and_ignores_other_fields() -> None:
    a = [state("m:h:a", 0.1, 0.9), state("m:h:b", 0.2, 0.8)]
    b = [{**a[1], "n": 999, "updated_at": 5}, a[0]]
    assert expected_calibration_hash(a) == expected_calibration_hash(b)


def test_hash_definition() -> None:
    states = [state("m:h:b", 0.2, 0.8, 2), state("m:h:a", 0.1, 0.9)]
    text = "m:h:a:1:0.1:0.9|m:h:b:2:0.2:0.8"
    assert expected_calibration_hash(states) == hashlib.md5(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"p5": 0.1000001},
        {"p95": 0.9000001},
        {"version": 2},
        {"_key": "m:h:c"},
    ],
)
def test_any_change_in_force_changes_the_hash(change: dict) -> None:
    base = state("m:h:a", 0.1, 0.9)
    assert expected_calibration_hash([base]) != expected_calibration_hash([{**base, **change}])


def test_states_without_percentiles_are_ignored_but_unusable_ones_count() -> None:
    usable = state("m:h:a", 0.1, 0.9)
    assert expected_calibration_hash([usable, state("m:h:b", None, None)]) == (
        expected_calibration_hash([usable])
    )
    assert expected_calibration_hash([usable, state("m:h:b", 0.5, 0.5)]) != (
        expected_calibration_hash([usable])
    )


def test_integral_float_versions_and_int_percentiles_normalise() -> None:
    assert expected_calibration_hash([state("k", 0, 1, 3)]) == expected_calibration_hash(
        [state("k", 0.0, 1.0, 3.0)]
    )


@pytest.mark.parametrize(
    "value,p5,p95,expected",
    [
        (0.5, 0.0, 1.0, 0.5),
        (0.3, 0.2, 0.4, 0.5),
        (-1.0, 0.2, 0.4, 0.0),
        (2.0, 0.2, 0.4, 1.0),
        (0.2, 0.2, 0.4, 0.0),
        (0.4, 0.2, 0.4, 1.0),
        (0.5, 0.5, 0.5, None),
        (0.5, 0.6, 0.4, None),
        (0.5, None, 0.4, None),
        (0.5, 0.1, None, None),
        (None, 0.1, 0.4, None),
        (math.nan, 0.1, 0.4, None),
        (math.inf, 0.1, 0.4, None),
        ("0.5", 0.1, 0.4, None),
        (True, 0.1, 0.4, None),
        (1, 0, 2, 0.5),
    ],
)
def test_calibrate(value, p5, p95, expected) -> None:
    got = calibrate(value, p5, p95)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
