from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nomarr_pipeline.calibration import exports
from nomarr_pipeline.calibration.exports import (
    InvalidPackageError,
    export_package,
    export_sidecars,
    import_package,
    parse_package_file,
    sidecar_path,
)
from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.calibration.state import compute_state

NOW = 1_768_564_800_000  # 2026-01-16T12:00:00Z


def make_state(model: str, head: str, label: str, p5: float, p95: float, version: int = 1):
    state, _ = compute_state(
        None,
        model_key=model,
        head_name=head,
        label=label,
        version=version,
        spec=HistogramSpec(),
        result=PercentileResult(p5, p95, 100, 2, 3),
        now_ms=NOW,
    )
    return state


STATES = [
    make_state("effnet-discogs-effnet-1", "mood_happy", "happy", 0.1, 0.9),
    make_state("effnet-discogs-effnet-1", "mood_happy", "non_happy", 0.05, 0.85),
    make_state("musicnn-msd-musicnn-1", "mood_happy", "happy", 0.2, 0.7, version=2),
]


class FakeStore:
    def __init__(self, existing: dict[str, dict] | None = None) -> None:
        self.states = dict(existing or {})
        self.saves: list[tuple[list, list]] = []

    def get_calibrations(self, keys):
        return {key: self.states[key] for key in keys if key in self.states}

    def save_calibrations(self, states, history) -> None:
        self.saves.append((list(states), list(history)))
        for state in states:
            self.states[state["_key"]] = state


def test_sidecars_one_per_head_and_backbone(tmp_path: Path) -> None:
    report = export_sidecars(STATES, tmp_path, now_ms=NOW)
    assert not report.warnings
    effnet = sidecar_path(tmp_path, "effnet-discogs-effnet-1", "mood_happy", 1)
    musicnn = sidecar_path(tmp_path, "musicnn-msd-musicnn-1", "mood_happy", 2)
    assert sorted(report.written) == sorted([effnet, musicnn])
    assert effnet.name == "mood_happy-calibration-v1.json"
    document = json.loads(effnet.read_text())
    assert document["model"] == "effnet-discogs-effnet-1"
    assert document["head"] == "mood_happy"
    assert document["version"] == 1
    assert document["generated_at"] == "2026-01-16T12:00:00Z"
    assert list(document["labels"]) == ["happy", "non_happy"]
    assert document["labels"]["happy"] | {"histogram": None} == {
        "p5": 0.1, "p95": 0.9, "n": 100, "underflow_count": 2, "overflow_count": 3,
        "histogram": None,
    }  # fmt: skip
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_exports_leave_out_calibrations_that_cannot_be_applied(tmp_path: Path) -> None:
    flat = make_state("effnet-discogs-effnet-1", "mood_sad", "sad", 0.4, 0.4)  # p95 <= p5
    flat_only_head = sidecar_path(tmp_path, "effnet-discogs-effnet-1", "mood_sad", 1)
    assert not export_sidecars([*STATES, flat], tmp_path, now_ms=NOW).warnings
    assert not flat_only_head.exists()
    package = json.loads(export_package([*STATES, flat], tmp_path, now_ms=NOW).read_text())
    assert sorted(entry["key"] for entry in package["calibrations"]) == sorted(s["_key"] for s in STATES)


def test_sidecar_failure_is_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "effnet-discogs-effnet-1"
    blocker.write_text("a file where a folder should be")
    report = export_sidecars(STATES, tmp_path, now_ms=NOW)
    assert report.warnings
    assert len(report.warnings) == 1 and "effnet-discogs-effnet-1" in report.warnings[0]
    assert len(report.written) == 1  # the other backbone still got its sidecar


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    path = export_package(STATES, tmp_path, now_ms=NOW)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(exports.os, "replace", broken_replace)
    with pytest.raises(OSError):
        export_package(STATES[:1], tmp_path, now_ms=NOW + 1)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["calibrations.json"]


def test_package_round_trip(tmp_path: Path) -> None:
    path = export_package(STATES, tmp_path, now_ms=NOW)
    package = json.loads(path.read_text())
    assert package["version"] == "1.0" and package["method"] == "histogram"
    assert package["exported_at"] == "2026-01-16T12:00:00Z"
    assert [c["key"] for c in package["calibrations"]] == sorted(s["_key"] for s in STATES)
    entry = package["calibrations"][0]
    assert set(entry) == {
        "key", "model", "head", "label", "version", "p5", "p95", "n", "underflow_count",
        "overflow_count", "histogram",
    }  # fmt: skip
    loaded = {state["_key"]: state for state in parse_package_file(path)[0]}
    for original in STATES:
        got = loaded[original["_key"]]
        for name in ("model_key", "head_name", "label", "version", "p5", "p95", "n",
                     "underflow_count", "overflow_count", "histogram", "calibration_def_hash"):  # fmt: skip
            assert got[name] == original[name], name


def test_import_bootstraps_and_db_wins_by_default(tmp_path: Path) -> None:
    path = export_package(STATES, tmp_path, now_ms=NOW)
    existing_key = STATES[0]["_key"]
    store = FakeStore({existing_key: {**STATES[0], "p5": 0.3, "created_at": 7}})
    report = import_package(store, path, now_ms=NOW + 5)
    assert report.skipped_existing == [existing_key]
    assert sorted(report.imported) == sorted(s["_key"] for s in STATES[1:])
    assert len(store.saves) == 1 and store.saves[0][1] == []  # one call, no history
    assert store.states[existing_key]["p5"] == 0.3
    imported = store.states[STATES[1]["_key"]]
    assert imported["imported"] is True and imported["imported_at"] == NOW + 5
    assert imported["created_at"] == imported["updated_at"] == NOW + 5

    report = import_package(store, path, now_ms=NOW + 9, overwrite=True)
    assert len(report.imported) == 3
    assert store.states[existing_key]["p5"] == 0.1
    assert store.states[existing_key]["created_at"] == 7  # creation time survives overwrite


def valid_package() -> dict:
    return json.loads(json.dumps(exports.package_document(STATES, "2026-01-16T12:00:00Z")))


def write(tmp_path: Path, payload) -> Path:
    path = tmp_path / "calibrations.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def corrupt(change):
    def apply(package: dict) -> dict:
        change(package)
        return package

    return apply


BAD_PACKAGES = {
    "not_json": "{",
    "not_object": [],
    "wrong_version": corrupt(lambda p: p.update(version="2.0")),
    "wrong_method": corrupt(lambda p: p.update(method="minmax")),
    "no_list": corrupt(lambda p: p.update(calibrations={})),
    "entry_not_object": corrupt(lambda p: p["calibrations"].append(1)),
    "missing_field": corrupt(lambda p: p["calibrations"][1].pop("p95")),
    "key_mismatch": corrupt(lambda p: p["calibrations"][1].update(key="a:b:c")),
    "empty_label": corrupt(lambda p: p["calibrations"][1].update(label="")),
    "string_p5": corrupt(lambda p: p["calibrations"][1].update(p5="0.1")),
    "bool_n": corrupt(lambda p: p["calibrations"][1].update(n=True)),
    "float_version": corrupt(lambda p: p["calibrations"][1].update(version=1.5)),
    "zero_n": corrupt(lambda p: p["calibrations"][1].update(n=0)),
    "negative_overflow": corrupt(lambda p: p["calibrations"][1].update(overflow_count=-1)),
    "too_much_overflow": corrupt(lambda p: p["calibrations"][1].update(overflow_count=500)),
    "p5_above_p95": corrupt(lambda p: p["calibrations"][1].update(p5=0.95)),
    "p95_outside_range": corrupt(lambda p: p["calibrations"][1].update(p95=1.5)),
    "bad_histogram": corrupt(lambda p: p["calibrations"][1]["histogram"].update(hi=-1)),
    "histogram_width": corrupt(lambda p: p["calibrations"][1]["histogram"].update(bin_width=0.5)),
    "histogram_not_object": corrupt(lambda p: p["calibrations"][1].update(histogram=[0, 1])),
    "duplicate": corrupt(lambda p: p["calibrations"].append(dict(p["calibrations"][1]))),
}


@pytest.mark.parametrize("name", sorted(BAD_PACKAGES))
def test_invalid_packages_are_refused_with_the_entry_named(tmp_path: Path, name: str) -> None:
    bad = BAD_PACKAGES[name]
    payload = bad(valid_package()) if callable(bad) else bad
    path = write(tmp_path, payload)
    with pytest.raises(InvalidPackageError) as error:
        parse_package_file(path)
    if callable(bad) and name not in {"wrong_version", "wrong_method", "no_list"}:
        assert "calibrations[" in str(error.value)
    store = FakeStore()
    with pytest.raises(InvalidPackageError):
        import_package(store, path, NOW)
    assert store.saves == []  # nothing half-imported


def test_nan_is_refused(tmp_path: Path) -> None:
    text = json.dumps(valid_package()).replace('"p5": 0.1,', '"p5": NaN,', 1)
    assert "NaN" in text
    with pytest.raises(InvalidPackageError, match="NaN"):
        parse_package_file(write(tmp_path, text))


def test_missing_file_is_an_invalid_package(tmp_path: Path) -> None:
    with pytest.raises(InvalidPackageError, match="cannot read"):
        parse_package_file(tmp_path / "absent.json")


def test_equal_percentiles_are_accepted_but_flagged(tmp_path: Path) -> None:
    package = valid_package()
    package["calibrations"][0].update(p5=0.5, p95=0.5)
    path = write(tmp_path, package)
    assert len(parse_package_file(path)[0]) == 3
    report = import_package(FakeStore(), path, NOW)
    assert report.unusable == [package["calibrations"][0]["key"]]
