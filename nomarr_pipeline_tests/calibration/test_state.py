from __future__ import annotations

import hashlib

import pytest

from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.calibration.state import (
    calibration_def_hash,
    calibration_key,
    compute_state,
    history_key,
)

SPEC = HistogramSpec()
HEAD = {"model_key": "effnet-discogs-effnet-1", "head_name": "mood_happy", "label": "happy"}
STATE_FIELDS = {
    "_key", "model_key", "head_name", "label", "calibration_def_hash", "version", "histogram",
    "p5", "p95", "n", "underflow_count", "overflow_count", "created_at", "updated_at",
    "last_computation_at",
}  # fmt: skip
HISTORY_FIELDS = {
    "_key", "calibration_key", "snapshot_at", "p5", "p95", "n", "underflow_count",
    "overflow_count", "p5_delta", "p95_delta", "n_delta",
}  # fmt: skip


def result(p5: float, p95: float, n: int = 100, under: int = 0, over: int = 0):
    return PercentileResult(p5, p95, n, under, over)


def compute(previous, res, now_ms, *, version=1, spec=SPEC, tol=0.005, snapshot=None):
    return compute_state(
        previous,
        **HEAD,
        version=version,
        spec=spec,
        result=res,
        now_ms=now_ms,
        drift_tolerance=tol,
        previous_snapshot=snapshot,
    )


def test_identity() -> None:
    assert calibration_key("m", "h", "l") == "m:h:l"
    assert calibration_def_hash("m", "h", 5) == hashlib.md5(b"m:h:5").hexdigest()
    assert calibration_def_hash("m", "h", 5) != calibration_def_hash("m", "h", 6)


def test_first_computation_has_every_seed_field() -> None:
    state, history = compute(None, result(0.1, 0.9, 100, 3, 4), 1000)
    assert set(state) >= STATE_FIELDS
    assert set(history) >= HISTORY_FIELDS
    assert state["_key"] == "effnet-discogs-effnet-1:mood_happy:happy"
    assert state["histogram"] == SPEC.to_doc()
    assert (state["p5"], state["p95"], state["n"]) == (0.1, 0.9, 100)
    assert (state["underflow_count"], state["overflow_count"]) == (3, 4)
    assert state["created_at"] == state["updated_at"] == state["last_computation_at"] == 1000
    assert (state["computed_p5"], state["computed_p95"]) == (0.1, 0.9)
    assert history["calibration_key"] == state["_key"]
    assert history["snapshot_at"] == 1000
    assert (history["p5_delta"], history["p95_delta"], history["n_delta"]) == (None, None, None)
    assert history["adopted"] is True


def test_small_drift_keeps_values_in_force_but_updates_counts() -> None:
    first, first_history = compute(None, result(0.1, 0.9, 100), 1000)
    second, history = compute(first, result(0.1049, 0.9, 150, 1, 2), 2000, snapshot=first_history)
    assert (second["p5"], second["p95"]) == (0.1, 0.9)
    assert (second["computed_p5"], second["computed_p95"]) == (0.1049, 0.9)
    assert (second["n"], second["underflow_count"], second["overflow_count"]) == (150, 1, 2)
    assert second["created_at"] == 1000
    assert second["updated_at"] == second["last_computation_at"] == 2000
    assert second["adopted_at"] == 1000
    assert history["adopted"] is False
    assert history["p5"] == 0.1049  # history records what was computed
    assert history["p5_delta"] == pytest.approx(0.0049)
    assert history["p95_delta"] == 0.0
    assert history["n_delta"] == 50


@pytest.mark.parametrize("new_p5,new_p95", [(0.105, 0.9), (0.1, 0.895), (0.2, 0.5)])
def test_drift_at_tolerance_is_adopted(new_p5: float, new_p95: float) -> None:
    first, _ = compute(None, result(0.1, 0.9), 1000)
    second, history = compute(first, result(new_p5, new_p95), 2000)
    assert (second["p5"], second["p95"]) == (new_p5, new_p95)
    assert second["adopted_at"] == 2000
    assert history["adopted"] is True


def test_exact_bin_multiples_count_as_reaching_tolerance() -> None:
    spec = HistogramSpec()
    first, _ = compute(None, result(spec.lower_edge(1234), 0.9), 1000)
    moved = spec.lower_edge(1234 + 50)  # 50 bins = 0.005 up to float rounding
    second, _ = compute(first, result(moved, 0.9), 2000)
    assert second["p5"] == moved


def test_zero_tolerance_always_adopts() -> None:
    first, _ = compute(None, result(0.1, 0.9), 1000, tol=0.0)
    second, _ = compute(first, result(0.1001, 0.9), 2000, tol=0.0)
    assert second["p5"] == 0.1001


def test_version_change_adopts_even_tiny_drift() -> None:
    first, _ = compute(None, result(0.1, 0.9), 1000, version=1)
    second, _ = compute(first, result(0.1001, 0.9), 2000, version=2)
    assert second["p5"] == 0.1001 and second["version"] == 2
    assert second["calibration_def_hash"] == calibration_def_hash(
        HEAD["model_key"], HEAD["head_name"], 2
    )


def test_histogram_change_adopts() -> None:
    first, _ = compute(None, result(0.1, 0.9), 1000)
    second, _ = compute(first, result(0.1001, 0.9), 2000, spec=HistogramSpec(0.0, 2.0))
    assert second["p5"] == 0.1001


def test_imported_calibration_survives_small_drift() -> None:
    imported = {
        "_key": "x", "version": 1, "histogram": SPEC.to_doc(), "p5": 0.1, "p95": 0.9,
        "imported": True, "imported_at": 500, "created_at": 500, "adopted_at": 500,
    }  # fmt: skip
    state, _ = compute(imported, result(0.1001, 0.9), 2000)
    assert (state["p5"], state["imported"], state["imported_at"]) == (0.1, True, 500)
    moved, _ = compute(imported, result(0.2, 0.9), 3000)
    assert (moved["p5"], moved["imported"], moved["imported_at"]) == (0.2, False, None)


def test_rerun_is_idempotent() -> None:
    first, first_history = compute(None, result(0.1, 0.9), 1000)
    again, again_history = compute(None, result(0.1, 0.9), 1000)
    assert first == again and first_history == again_history


def test_empty_result_is_refused() -> None:
    with pytest.raises(ValueError, match="n == 0"):
        compute(None, PercentileResult(None, None, 0, 0, 0), 1000)


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError):
        compute(None, result(0.1, 0.9), 1000, tol=-1)


def test_history_keys_are_safe_and_distinct() -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:.@()+,=;$!*'")
    a = history_key("effnet:genre_discogs400:Folk, World, & Country", 1)
    b = history_key("effnet:genre_discogs400:Folk, World, / Country", 1)
    assert set(a) <= allowed and set(b) <= allowed
    assert a != b
    assert history_key("m:h:l", 1) != history_key("m:h:l", 2)


def test_usable_calibration_needs_p95_above_p5() -> None:
    from nomarr_pipeline.calibration.state import has_usable_calibration, is_usable

    assert is_usable({"p5": 0.1, "p95": 0.9})
    assert not is_usable({"p5": 0.5, "p95": 0.5})
    assert not is_usable({"p5": None, "p95": 0.9})
    # The writer and the CLI preview gate mood tiers on this: degenerate states do not count.
    assert not has_usable_calibration([{"p5": 0.5, "p95": 0.5}, {"p5": None, "p95": None}])
    assert has_usable_calibration([{"p5": 0.5, "p95": 0.5}, {"p5": 0.2, "p95": 0.8}])
    assert not has_usable_calibration([])
