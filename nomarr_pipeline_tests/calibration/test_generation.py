from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from nomarr_pipeline.calibration.generation import (
    DAY_MS,
    calibrate_head,
    calibrate_heads,
    calibration_progress,
)
from nomarr_pipeline.calibration.histogram import REGRESSION_SPEC, HistogramSpec, derive_percentiles
from nomarr_pipeline.store import Store
from nomarr_pipeline_tests.calibration.binning import label_histogram
from nomarr_pipeline_tests.calibration.conftest import populate
from nomarr_pipeline_tests.calibration.heads import HeadRef

EFFNET = "effnet-discogs-effnet-1"
NOW = 1_768_564_800_000
RNG = np.random.default_rng(3)
HAPPY = RNG.uniform(0.2, 0.8, 400).round(6).tolist()
MOODS = {
    "calm": RNG.uniform(0.0, 0.5, 400).round(6).tolist(),
    "dark": RNG.beta(2, 5, 400).round(6).tolist(),
}
HAPPY_HEAD = HeadRef(EFFNET, "mood_happy", 1, ("happy", "non_happy"))
MOOD_HEAD = HeadRef(EFFNET, "mtg_jamendo_moodtheme", 1, ("calm", "dark", "epic"))


def _stored(store: Store, key: str) -> dict | None:
    return store.get_calibrations([key]).get(key)


def fill(store: Store, happy: list[float] = HAPPY) -> None:
    populate(
        store,
        {
            (EFFNET, "mood_happy"): {"happy": happy, "non_happy": [1 - v for v in happy]},
            (EFFNET, "mtg_jamendo_moodtheme"): MOODS,
        },
    )


def test_calibrates_every_label_with_seed_fields(sqlite_store: Store) -> None:
    fill(sqlite_store)
    reports = calibrate_heads(sqlite_store, [HAPPY_HEAD, MOOD_HEAD], now_ms=NOW)
    assert [r.partition_key for r in reports] == [
        f"{EFFNET}:mood_happy",
        f"{EFFNET}:mtg_jamendo_moodtheme",
    ]
    happy_report, mood_report = reports
    assert [label.label for label in happy_report.labels] == ["happy", "non_happy"]
    assert mood_report.empty_labels == ["epic"]  # no values: reported, no state
    assert _stored(sqlite_store, f"{EFFNET}:mtg_jamendo_moodtheme:epic") is None
    assert happy_report.changed and happy_report.error is None and happy_report.n == 800

    state = _stored(sqlite_store, f"{EFFNET}:mood_happy:happy")
    assert state is not None
    hist = label_histogram(sqlite_store, EFFNET, "mood_happy", "happy", 0.0, 1.0, 10_000)
    expected = derive_percentiles(hist)
    assert (state["p5"], state["p95"], state["n"]) == (expected.p5, expected.p95, 400)
    assert state["histogram"] == HistogramSpec().to_doc()
    assert state["created_at"] == state["updated_at"] == state["last_computation_at"] == NOW
    assert len(sqlite_store.list_calibrations()) == 4
    history = sqlite_store.recent_history([state["_key"]], per_key=10)[state["_key"]]
    assert len(history) == 1 and history[0]["p5"] == state["p5"]


def test_a_heads_stored_states_are_read_in_one_query(sqlite_store: Store) -> None:
    """Recalibrating a head reads its labels' previous states at once, not once per label."""
    fill(sqlite_store)
    calibrate_heads(sqlite_store, [MOOD_HEAD], now_ms=NOW)
    statements: list[str] = []
    sqlite_store._conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    calibrate_heads(sqlite_store, [MOOD_HEAD], now_ms=NOW + DAY_MS)
    reads = [s for s in statements if s.lstrip().startswith("SELECT") and "FROM calibration_state" in s]
    assert len(reads) == 1, reads


def test_rerun_is_idempotent(sqlite_store: Store) -> None:
    fill(sqlite_store)
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW)
    first = sqlite_store.list_calibrations()
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW)
    assert sqlite_store.list_calibrations() == first
    key = f"{EFFNET}:mood_happy:happy"
    assert len(sqlite_store.recent_history([key], per_key=10)[key]) == 1


def test_later_run_records_history_and_respects_drift(sqlite_store: Store) -> None:
    fill(sqlite_store)
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW)
    key = f"{EFFNET}:mood_happy:happy"
    first = _stored(sqlite_store, key)
    assert first is not None

    # Same data a day later: nothing in force changes, a snapshot with zero deltas is added.
    (report,) = calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW + DAY_MS)
    assert not report.changed
    (latest,) = sqlite_store.recent_history([key])[key]
    assert (latest["p5_delta"], latest["p95_delta"], latest["n_delta"]) == (0.0, 0.0, 0)
    happy = next(label for label in report.labels if label.label == "happy")
    assert (happy.p5_delta, happy.p95_delta) == (0.0, 0.0)  # the report carries the deltas

    # Much higher values: the percentiles move far beyond the tolerance and are adopted.
    fill(sqlite_store, [min(v + 0.15, 1.0) for v in HAPPY])
    (report,) = calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW + 2 * DAY_MS)
    moved = _stored(sqlite_store, key)
    assert moved is not None and report.changed
    assert moved["p5"] == pytest.approx(first["p5"] + 0.15, abs=2e-4)
    assert moved["created_at"] == NOW and moved["updated_at"] == NOW + 2 * DAY_MS
    assert len(sqlite_store.recent_history([key], per_key=10)[key]) == 3


class CountingStore:
    """The real store, counting the calls made to it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> object:
        self.calls[name] += 1
        return getattr(self.store, name)


def test_one_history_query_per_head_whatever_its_labels(sqlite_store: Store) -> None:
    labels = tuple(f"genre_{i:03d}" for i in range(40))
    populate(sqlite_store, {(EFFNET, "genre_discogs400"): {label: HAPPY[:50] for label in labels}})
    head = HeadRef(EFFNET, "genre_discogs400", 1, labels)
    for day in range(2):  # the first computation, then one with previous snapshots
        counting = CountingStore(sqlite_store)
        (report,) = calibrate_heads(counting, [head], now_ms=NOW + day * DAY_MS)  # type: ignore[list-item]
        history_reads = {name: n for name, n in counting.calls.items() if "history" in name}
        assert history_reads == {"recent_history": 1}
        assert len(report.labels) == 40 and report.error is None


def test_small_drift_is_not_adopted(sqlite_store: Store) -> None:
    fill(sqlite_store)
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW)
    key = f"{EFFNET}:mood_happy:happy"
    before = _stored(sqlite_store, key)
    fill(sqlite_store, [v + 0.001 for v in HAPPY])
    (report,) = calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW + 1)
    after = _stored(sqlite_store, key)
    assert before is not None and after is not None
    assert (after["p5"], after["p95"]) == (before["p5"], before["p95"])
    assert after["computed_p5"] != before["p5"]
    assert not report.changed
    # A version bump adopts the same small drift.
    bumped = HeadRef(EFFNET, "mood_happy", 2, ("happy", "non_happy"))
    (report,) = calibrate_heads(sqlite_store, [bumped], now_ms=NOW + 2)
    after_bump = _stored(sqlite_store, key)
    assert after_bump is not None and report.changed
    assert after_bump["p5"] == after["computed_p5"] and after_bump["version"] == 2


def test_labels_come_from_the_store_when_the_head_lists_none(sqlite_store: Store) -> None:
    fill(sqlite_store)
    (report,) = calibrate_heads(sqlite_store, [HeadRef(EFFNET, "mtg_jamendo_moodtheme")], now_ms=NOW)
    assert [label.label for label in report.labels] == ["calm", "dark"]


def test_spec_overrides_and_regression_default(sqlite_store: Store) -> None:
    populate(sqlite_store, {(EFFNET, "deam"): {"valence": [1.0, 4.5, 8.9], "arousal": [2.0, 3.0, 9.0]}})
    regression = HeadRef(EFFNET, "deam", 1, ("arousal", "valence"), kind="regression")
    (report,) = calibrate_heads(sqlite_store, [regression], now_ms=NOW)
    assert report.spec == REGRESSION_SPEC and not report.warnings
    state = _stored(sqlite_store, f"{EFFNET}:deam:valence")
    assert state is not None and state["overflow_count"] == 0 and state["p95"] > 1.0

    override = HistogramSpec(0.0, 20.0, 2000)
    (report,) = calibrate_heads(sqlite_store, [regression], specs={"deam": override}, now_ms=NOW + 1)
    assert report.spec == override

    # Without the regression range, everything above 1 is overflow: a warning, still saved.
    plain = HeadRef(EFFNET, "deam", 1, ("arousal", "valence"))
    (report,) = calibrate_heads(sqlite_store, [plain], now_ms=NOW + 2)
    assert len(report.warnings) == 2 and "Set NOMARR_HISTOGRAM_OVERRIDES" in report.warnings[0]
    assert f'{{"{EFFNET}:deam": {{"lo": <lowest value>, "hi": <highest value>}}}}' in report.warnings[0]


class FailingStore:
    """Wraps a store; ``histograms`` fails at one (head, label)."""

    def __init__(self, inner: Store, head_name: str, label: str) -> None:
        self.inner, self.head_name, self.label = inner, head_name, label

    def histograms(self, model_key, head_name, labels, lo, hi, bins):
        for label, hist in self.inner.histograms(model_key, head_name, labels, lo, hi, bins):
            if (head_name, label) == (self.head_name, self.label):
                raise RuntimeError("database went away")
            yield label, hist

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_failing_head_is_reported_and_leaves_no_partial_state(sqlite_store: Store) -> None:
    fill(sqlite_store)
    store = FailingStore(sqlite_store, "mood_happy", "non_happy")
    reports = calibrate_heads(store, [HAPPY_HEAD, MOOD_HEAD], now_ms=NOW)  # type: ignore[arg-type]
    assert reports[0].error == "RuntimeError: database went away"
    assert reports[1].error is None
    # 'happy' was computed before the failure but never saved: a head is all or nothing.
    assert _stored(sqlite_store, f"{EFFNET}:mood_happy:happy") is None
    assert _stored(sqlite_store, f"{EFFNET}:mtg_jamendo_moodtheme:calm") is not None
    with pytest.raises(RuntimeError):
        calibrate_heads(store, [HAPPY_HEAD], now_ms=NOW, stop_on_error=True)  # type: ignore[arg-type]
    # After the crash, a rerun completes the head.
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW)
    assert _stored(sqlite_store, f"{EFFNET}:mood_happy:happy") is not None


def test_keep_histograms_for_plots(sqlite_store: Store) -> None:
    fill(sqlite_store)
    report, histograms = calibrate_head(sqlite_store, MOOD_HEAD, now=NOW, keep_histograms=True)
    assert report.empty_labels == ["epic"]
    assert sorted(histograms) == ["calm", "dark", "epic"]
    assert histograms["calm"].n == 400 and histograms["epic"].n == 0


def test_progress_per_head(sqlite_store: Store) -> None:
    fill(sqlite_store)
    unknown = HeadRef(EFFNET, "mood_sad", 1, ("sad", "non_sad"))
    heads = [HAPPY_HEAD, MOOD_HEAD, unknown]
    assert calibration_progress(sqlite_store, heads, now_ms=NOW) == {
        "total_heads": 3, "calibrated_heads": 0, "remaining_heads": 3, "last_updated": None,
    }  # fmt: skip
    calibrate_heads(sqlite_store, [HAPPY_HEAD], now_ms=NOW - 2 * DAY_MS)
    calibrate_heads(sqlite_store, [MOOD_HEAD], now_ms=NOW - 1000)
    assert calibration_progress(sqlite_store, heads, now_ms=NOW) == {
        "total_heads": 3, "calibrated_heads": 1, "remaining_heads": 2, "last_updated": NOW - 1000,
    }  # fmt: skip
    # A new head version makes the old calibration stale.
    bumped = HeadRef(EFFNET, "mtg_jamendo_moodtheme", 2, MOOD_HEAD.labels)
    progress = calibration_progress(sqlite_store, [bumped], now_ms=NOW)
    assert progress["calibrated_heads"] == 0
    wide = calibration_progress(sqlite_store, heads, now_ms=NOW, recent_ms=3 * DAY_MS)
    assert wide["calibrated_heads"] == 2


def test_report_lists_calibrated_and_empty_labels(sqlite_store: Store) -> None:
    fill(sqlite_store)
    (report,) = calibrate_heads(sqlite_store, [MOOD_HEAD], now_ms=NOW)
    assert report.partition_key == f"{EFFNET}:mtg_jamendo_moodtheme"
    assert sorted(label.label for label in report.labels) == ["calm", "dark"]
    assert report.empty_labels == ["epic"]
    assert next(label for label in report.labels if label.label == "calm").usable is True
