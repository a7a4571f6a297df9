"""One contract, every engine: what the pipeline relies on from its store."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from nomarr_pipeline.library.scanner import STALE_ANALYSIS_RESET
from nomarr_pipeline.store import (
    DOCUMENT_COLLECTIONS,
    TIER_INPUT_FIELDS,
    AnalysisClaim,
    HeadVersion,
    Store,
)
from nomarr_pipeline_tests.calibration.binning import label_histogram

HEAD = HeadVersion("effnet-discogs-effnet-1", "mood_happy", "tv1")


def _stat(key: str, size: int, mtime_ns: int, written: object = None) -> dict[str, object]:
    return {"_key": key, "size": size, "mtime_ns": mtime_ns, "written_stats": written}


def _file(key: str, library_id: str = "lib1", **fields: object) -> dict[str, object]:
    return {
        "_key": key,
        "library_id": library_id,
        "path": f"/music/{key}.mp3",
        "size": 10,
        "mtime_ns": 100,
        "scanned_at": 1,
        **fields,
    }


def _tag(
    file_id: str,
    label: str,
    value: object,
    *,
    head: HeadVersion = HEAD,
    std: float = 0.01,
    nomarr_only: bool = True,
) -> dict[str, object]:
    return {
        "_key": f"{file_id}|{head.model_key}|{head.head_name}|{label}",
        "file_id": file_id,
        "model_key": head.model_key,
        "head_name": head.head_name,
        "label": label,
        "value": value,
        "std": std,
        "calibrated_value": None,
        "nomarr_only": nomarr_only,
        "tagger_version": head.tagger_version,
    }


def _state(label: str, p5: float, p95: float, head: HeadVersion = HEAD) -> dict[str, object]:
    return {
        "_key": f"{head.model_key}:{head.head_name}:{label}",
        "model_key": head.model_key,
        "head_name": head.head_name,
        "label": label,
        "calibration_def_hash": "h",
        "version": 1,
        "histogram": {"lo": 0.0, "hi": 1.0, "bins": 10000, "bin_width": 0.0001},
        "p5": p5,
        "p95": p95,
        "n": 10,
        "underflow_count": 0,
        "overflow_count": 0,
        "created_at": 1,
        "updated_at": 1,
        "last_computation_at": 1,
    }


def test_libraries_keep_user_settings(store: Store) -> None:
    lib = {
        "_key": "lib1",
        "name": "Music",
        "root_path": "/music",
        "auto_write_tags": False,
        "file_write_mode": "full",
        "write_raw_scores": False,
        "created_at": 5,
    }
    assert store.ensure_library(lib) == lib
    store.update_library("lib1", {"file_write_mode": "minimal", "auto_write_tags": True})
    again = store.ensure_library({**lib, "name": "Other"})
    assert again["file_write_mode"] == "minimal" and again["auto_write_tags"] is True
    assert again["name"] == "Music"
    assert [lib["_key"] for lib in store.list_libraries()] == ["lib1"]
    assert store.get_library("missing") is None


def test_folder_cache_is_replaced_per_library(store: Store) -> None:
    store.save_folder_cache("lib1", {"/music": (1, 2), "/music/a": (3, 4)})
    store.save_folder_cache("lib2", {"/other": (9, 9)})
    store.save_folder_cache("lib1", {"/music": (5, 6)})
    assert store.load_folder_cache("lib1") == {"/music": (5, 6)}
    assert store.load_folder_cache("lib2") == {"/other": (9, 9)}


def test_files_upsert_partial_update_index_and_delete(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b"), _file("c", library_id="lib2")])
    store.upsert_files([{"_key": "a", "size": 20, "analysis_error": "boom"}])
    assert store.file_index("lib1") == {
        "/music/a.mp3": _stat("a", 20, 100),
        "/music/b.mp3": _stat("b", 10, 100),
    }
    (a,) = store.get_files(["a"])
    assert a["path"] == "/music/a.mp3" and a["analysis_error"] == "boom"
    assert a["file_tags_pending"] is False
    store.write_predictions([_tag("a", "happy", 0.5), _tag("b", "happy", 0.6)])
    store.delete_files(["a"])
    assert store.get_files(["a"]) == []
    assert store.file_tags_for_files(["a"]) == []
    assert len(store.file_tags_for_files(["b"])) == 1
    assert store.file_counts("lib2")["total"] == 1


def test_delete_file_tags_keeps_the_file(store: Store) -> None:
    store.upsert_files([_file("a")])
    store.write_predictions([_tag("a", "happy", 0.5)])
    store.delete_file_tags(["a"])
    assert store.file_tags_for_files(["a"]) == []
    assert len(store.get_files(["a"])) == 1


def test_file_counts(store: Store) -> None:
    store.upsert_files(
        [
            _file("a", analyzed_at=5),
            _file("b", analyzed_at=5, analysis_error="bad"),
            _file("c", scan_error="unreadable", analysis_error="never decoded"),
            _file("d", file_tags_pending=True),
            _file("e", written_at=9, write_error="denied"),
            _file("z", library_id="lib2"),
        ]
    )
    assert store.file_counts("lib1") == {
        "total": 5,
        "analysed": 1,
        "analysis_errors": 2,
        "scan_errors": 1,
        "pending_writes": 1,
        "write_errors": 1,
        "written": 1,
    }
    assert store.file_counts()["total"] == 6


OTHER = HeadVersion(HEAD.model_key, "danceability", "tv1")


def _error(file_id: str, head: HeadVersion = HEAD, error: str = "head failed") -> dict[str, object]:
    return {"file_id": file_id, "model_key": head.model_key, "head_name": head.head_name,
            "tagger_version": head.tagger_version, "error": error, "failed_at": 7}


def _claimed(files: Sequence[object]) -> list[tuple[str, list[str]]]:
    return [(f.doc["_key"], [h.head_name for h in f.heads]) for f in files]  # type: ignore[attr-defined]


def test_files_need_a_head_without_current_predictions_or_failure(store: Store) -> None:
    store.upsert_files([_file(k) for k in "abcdefg"])
    store.upsert_files([{"_key": "d", "scan_error": "x"}, {"_key": "e", "analysis_error": "undecodable"}])
    store.write_predictions([_tag("a", "happy", 0.5)])
    stale = HeadVersion(HEAD.model_key, HEAD.head_name, "old")
    store.write_predictions([_tag("b", "happy", 0.5, head=stale)])
    store.record_analysis_errors([_error("f"), _error("g", stale)])
    assert store.count_files_needing_analysis(HEAD) == 3  # b (stale), c, g (failed on an old model)
    assert store.count_files_needing_analysis(OTHER) == 5  # a failure is the head's, not the file's
    claim = AnalysisClaim("run-1", 0)
    assert _claimed(store.claim_files_for_analysis([HEAD, OTHER], claim, 10)) == [
        ("a", ["danceability"]), ("b", ["mood_happy", "danceability"]),
        ("c", ["mood_happy", "danceability"]), ("f", ["danceability"]),
        ("g", ["mood_happy", "danceability"]),
    ]
    (first,) = store.claim_files_for_analysis([HEAD], AnalysisClaim("run-2"), 1)
    assert first.doc == store.get_files(["b"])[0]


def test_claims_split_a_run_between_shards_in_key_order(store: Store) -> None:
    store.upsert_files([_file(f"f{i}") for i in range(7)])
    first, second = AnalysisClaim("run-1", 0), AnalysisClaim("run-1", 1)
    taken = [
        store.claim_files_for_analysis([HEAD], first, 2),
        store.claim_files_for_analysis([HEAD], second, 3),
        store.claim_files_for_analysis([HEAD], first, 5, after_key="f1"),
        store.claim_files_for_analysis([HEAD], second, 5),
    ]
    assert [[f.doc["_key"] for f in batch] for batch in taken] == [
        ["f0", "f1"], ["f2", "f3", "f4"], ["f5", "f6"], []]
    # Another run ignores this run's claims; the cursor only skips ahead.
    other = store.claim_files_for_analysis([HEAD], AnalysisClaim("run-2", 0), 10, after_key="f4")
    assert [f.doc["_key"] for f in other] == ["f5", "f6"]


def test_a_retried_shard_takes_back_its_own_unfinished_claims(store: Store) -> None:
    store.upsert_files([_file(k) for k in "abcde"])
    shard0, shard1 = AnalysisClaim("run-1", 0), AnalysisClaim("run-1", 1)
    store.claim_files_for_analysis([HEAD, OTHER], shard0, 3)
    store.claim_files_for_analysis([HEAD, OTHER], shard1, 2)
    # shard 0 finished a (both heads) and b's first head before it died
    store.write_predictions([_tag("a", "happy", 0.5), _tag("a", "danceable", 0.5, head=OTHER),
                             _tag("b", "happy", 0.5)])
    store.record_analysis_errors([_error("c", OTHER)])
    assert _claimed(store.reclaim_files_for_analysis([HEAD, OTHER], shard0)) == [
        ("b", ["danceability"]), ("c", ["mood_happy"])]
    assert _claimed(store.reclaim_files_for_analysis([HEAD, OTHER], shard1)) == [
        ("d", ["mood_happy", "danceability"]), ("e", ["mood_happy", "danceability"])]
    assert store.reclaim_files_for_analysis([HEAD], AnalysisClaim("run-2", 0)) == []
    # Claims of one run never go to another shard of it.
    assert store.claim_files_for_analysis([HEAD, OTHER], AnalysisClaim("run-1", 2), 10) == []


def test_released_claims_free_their_files(store: Store) -> None:
    store.upsert_files([_file(k) for k in "abc"])
    store.claim_files_for_analysis([HEAD], AnalysisClaim("run-1", 0), 1)
    store.claim_files_for_analysis([HEAD], AnalysisClaim("run-2", 0), 3)
    assert store.release_analysis_claims("run-1", claimed_before_ms=0) == 1
    assert [f.doc["_key"] for f in store.claim_files_for_analysis([HEAD], AnalysisClaim("run-1", 1), 5)] == [
        "a", "b", "c"]
    # claims older than the given time go whatever their run (runs that died long ago)
    assert store.release_analysis_claims("run-3", claimed_before_ms=2**62) == 6


def test_analysis_errors_per_file_and_head(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b"), _file("c", library_id="lib2")])
    store.record_analysis_errors([_error("a"), _error("a", OTHER), _error("c")])
    store.record_analysis_errors([_error("a", error="again")])  # one document per (file, head)
    assert store.count_documents("analysis_errors") == 3
    assert store.count_files_with_analysis_errors([HEAD, OTHER]) == 2
    assert store.count_files_with_analysis_errors([HEAD], "lib1") == 1
    newer = HeadVersion(HEAD.model_key, HEAD.head_name, "tv2")
    assert store.count_files_with_analysis_errors([newer]) == 0  # failed on another model
    # predictions replace the failure of their head only
    store.write_predictions([_tag("a", "happy", 0.5)])
    assert store.count_files_with_analysis_errors([HEAD]) == 1  # c
    assert store.count_files_with_analysis_errors([OTHER]) == 1  # a, danceability
    (doc,) = [d for page in store.iter_documents("analysis_errors") for d in page
              if d["file_id"] == "a"]
    assert {k: doc[k] for k in ("model_key", "head_name", "tagger_version", "error", "failed_at")} == {
        "model_key": OTHER.model_key, "head_name": "danceability", "tagger_version": "tv1",
        "error": "head failed", "failed_at": 7}
    # a changed file gets another chance for every head; a removed one takes its errors along
    store.delete_file_tags(["a"])
    store.delete_files(["c"])
    assert store.count_documents("analysis_errors") == 0


def test_errors_of_unproven_heads_leave_out_heads_with_predictions(store: Store) -> None:
    store.upsert_files([_file(k) for k in "abc"])
    store.record_analysis_errors([{**_error(k), "model_fault": "it outputs NaN"} for k in "ab"])
    store.record_analysis_errors([_error("a", OTHER)])
    assert [(e["file_id"], e["head_name"], e["model_fault"])
            for e in sorted(store.errors_of_unproven_heads([HEAD]), key=lambda e: e["file_id"])] == [
        ("a", "mood_happy", "it outputs NaN"), ("b", "mood_happy", "it outputs NaN")]
    assert store.errors_of_unproven_heads([HeadVersion(HEAD.model_key, HEAD.head_name, "tv2")]) == []
    # one prediction at the head's version proves it works on some file
    store.write_predictions([_tag("c", "happy", 0.5)])
    assert store.errors_of_unproven_heads([HEAD]) == []
    assert [e["file_id"] for e in store.errors_of_unproven_heads([HEAD, OTHER])] == ["a"]


def test_write_predictions_replaces_a_head_group_and_clears_hash(store: Store) -> None:
    store.upsert_files([_file("a", calibration_hash="h1")])
    store.write_predictions([_tag("a", "happy", 0.1), _tag("a", "non_happy", 0.9)])
    other = HeadVersion(HEAD.model_key, "danceability", "tv1")
    store.write_predictions([_tag("a", "danceable", 0.3, head=other)])
    store.write_predictions([_tag("a", "happy", 0.2)])
    tags = {(t["head_name"], t["label"]): t["value"] for t in store.file_tags_for_files(["a"])}
    assert tags == {("mood_happy", "happy"): 0.2, ("danceability", "danceable"): 0.3}
    assert store.get_files(["a"])[0]["calibration_hash"] is None
    assert store.labels_of_head(HEAD.model_key, "danceability") == ["danceable"]
    tag = next(t for t in store.file_tags_for_files(["a"]) if t["label"] == "happy")
    assert tag["nomarr_only"] is True and isinstance(tag["value"], float)


def test_record_analysis(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b")])
    store.record_analysis(
        [
            {"_key": "a", "analyzed_at": 7, "analysis_error": None, "analysis_engine": "onnx"},
            {"_key": "b", "analyzed_at": 8, "analysis_error": "corrupt"},
        ]
    )
    a, b = store.get_files(["a", "b"])
    assert (a["analyzed_at"], a["analysis_error"], a["analysis_engine"]) == (7, None, "onnx")
    assert (b["analyzed_at"], b["analysis_error"], b.get("analysis_engine")) == (8, "corrupt", None)
    # The next analysis on another engine replaces the record.
    store.record_analysis([{"_key": "a", "analyzed_at": 9, "analysis_error": None,
                            "analysis_engine": "onnx+tensorflow"}])
    (a,) = store.get_files(["a"])
    assert (a["analyzed_at"], a["analysis_engine"]) == (9, "onnx+tensorflow")


def test_histogram_bins_eligible_values_and_counts_out_of_range_apart(store: Store) -> None:
    files = [_file(f"f{i}") for i in range(12)]
    store.upsert_files(files)
    values: list[object] = [0.0, 0.00005, 0.3, 0.3, 0.99995, 1.0, -0.2, 1.5, math.nan, math.inf, "0.5", 0.7]
    tags = [_tag(f"f{i}", "happy", v) for i, v in enumerate(values)]
    tags.append(_tag("f11", "non_happy", 0.4))
    tags[11]["nomarr_only"] = False
    store.write_predictions(tags)
    hist = label_histogram(store, HEAD.model_key, HEAD.head_name, "happy", 0.0, 1.0, 10_000)
    assert hist.bins == [(0, 2), (3000, 2), (9999, 2)]
    assert (hist.underflow_count, hist.overflow_count, hist.n) == (1, 1, 8)
    coarse = label_histogram(store, HEAD.model_key, HEAD.head_name, "happy", -1.0, 2.0, 3)
    assert coarse.bins == [(0, 1), (1, 5), (2, 2)] and coarse.n == 8
    empty = label_histogram(store, HEAD.model_key, HEAD.head_name, "missing", 0.0, 1.0, 10)
    assert empty.n == 0 and empty.bins == []


def test_histograms_of_several_labels_come_in_order_as_single_queries_give_them(store: Store) -> None:
    store.upsert_files([_file(f"f{i}") for i in range(30)])
    labels = [f"label{j}" for j in range(7)]
    store.write_predictions(
        [
            _tag(f"f{i}", label, ((i * 7 + j * 3) % 23) / 20 - 0.05)
            for i in range(30)
            for j, label in enumerate(labels)
        ]
    )
    wanted = [*reversed(labels), "missing"]
    found = list(store.histograms(HEAD.model_key, HEAD.head_name, wanted, 0.0, 1.0, 100))
    assert [label for label, _ in found] == wanted
    for label, hist in found:
        assert hist == label_histogram(store, HEAD.model_key, HEAD.head_name, label, 0.0, 1.0, 100)
    assert found[0][1].n == 30 and found[-1][1].n == 0
    assert list(store.histograms(HEAD.model_key, HEAD.head_name, [], 0.0, 1.0, 100)) == []
    store.close()  # also the connections of any parallel queries
    assert [
        label for label, _ in store.histograms(HEAD.model_key, HEAD.head_name, labels, 0.0, 1.0, 9)
    ] == labels


def test_calibrations_and_history_saved_together(store: Store) -> None:
    state = _state("happy", 0.1, 0.9)
    state["computed_p5"] = 0.11
    history = {
        "_key": "h1",
        "calibration_key": state["_key"],
        "snapshot_at": 10,
        "p5": 0.1,
        "p95": 0.9,
        "n": 10,
        "underflow_count": 0,
        "overflow_count": 0,
        "p5_delta": None,
        "p95_delta": None,
        "n_delta": None,
    }
    store.save_calibrations([state], [history])
    store.save_calibrations(
        [{**state, "n": 20}], [{**history, "_key": "h2", "snapshot_at": 20, "n": 20, "n_delta": 10}]
    )
    key = str(state["_key"])
    assert store.get_calibrations([key, "m:h:never-calibrated"]) == {key: {**state, "n": 20}}
    assert [c["_key"] for c in store.list_calibrations()] == [state["_key"]]
    (latest,) = store.recent_history([key])[key]
    assert latest["_key"] == "h2" and latest["n_delta"] == 10 and latest["p5_delta"] is None
    assert [h["_key"] for h in store.recent_history([key], per_key=5)[key]] == ["h2", "h1"]


def test_recent_history_of_many_calibrations_in_one_call(store: Store) -> None:
    """Each key gets its own newest snapshots (a limit per key, not over all of them)."""
    folk, happy = _state("Folk, World, & Country", 0.1, 0.9), _state("happy", 0.2, 0.8)
    snapshots = [
        {"_key": f"{name}@{at}", "calibration_key": state["_key"], "snapshot_at": at, "p5": 0.1, "n": at}
        for name, state, times in (("folk", folk, (10, 30, 20)), ("happy", happy, (5,)))
        for at in times
    ]
    store.save_calibrations([folk, happy], snapshots)
    keys = [str(folk["_key"]), str(happy["_key"]), "m:h:never-calibrated"]
    recent = store.recent_history(keys, per_key=2)
    assert {key: [h["_key"] for h in found] for key, found in recent.items()} == {
        keys[0]: ["folk@30", "folk@20"],
        keys[1]: ["happy@5"],
    }
    assert recent[keys[0]][0]["n"] == 30 and recent[keys[0]][0]["p95"] is None
    assert {key: len(found) for key, found in store.recent_history(keys).items()} == {keys[0]: 1, keys[1]: 1}
    assert store.recent_history([]) == {}
    assert store.get_calibrations(["nope"]) == {} and store.get_calibrations([]) == {}


def test_recalibration_claims_calibrate_and_finish(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b"), _file("c"), _file("x", library_id="lib2")])
    store.write_predictions(
        [
            _tag("a", "happy", 0.5),
            _tag("a", "non_happy", 0.05),
            _tag("b", "happy", 0.95),
            _tag("b", "bad", 0.5),
            _tag("x", "happy", 0.3),
        ]
    )
    store.record_analysis([{"_key": k, "analyzed_at": 1, "analysis_error": None} for k in ("a", "b", "x")])
    store.save_calibrations(
        [_state("happy", 0.1, 0.9), _state("non_happy", 0.1, 0.9), _state("bad", 0.5, 0.5)], []
    )
    assert store.count_files_needing_recalibration("H") == 3
    assert store.count_files_needing_recalibration("H", "lib1") == 2
    tiers = {"mood-strict": [], "mood-regular": ["happy"], "mood-loose": ["happy"]}
    assert store.claim_files_for_recalibration("H", "run:", "run:1", 10, "lib1") == ["a", "b"]
    assert store.finish_claimed_recalibration("run:1", "H", {"a": tiers, "b": None}) == ["a", "b"]
    got = {
        (t["file_id"], t["label"]): t["calibrated_value"] for t in store.file_tags_for_files(["a", "b", "x"])
    }
    assert got[("a", "happy")] == pytest.approx(0.5)
    assert got[("a", "non_happy")] == 0.0
    assert got[("b", "happy")] == 1.0
    assert got[("b", "bad")] is None  # p95 <= p5: nothing is calibrated
    assert got[("x", "happy")] is None  # not in this batch
    assert store.count_files_needing_recalibration("H", "lib1") == 0
    (a,) = store.get_files(["a"])
    assert a["mood_tiers"] == tiers and a["file_tags_pending"] is True
    assert store.reset_calibration_hashes("lib1") == 2
    assert store.count_files_needing_recalibration("H", "lib1") == 2


def test_pending_writes_and_results(store: Store) -> None:
    store.upsert_files(
        [
            _file("a", file_tags_pending=True),
            _file("b"),
            _file("c", file_tags_pending=True),
            _file("d", library_id="lib2", file_tags_pending=True),
        ]
    )
    assert [f["_key"] for f in store.files_pending_write("lib1", None, 10)] == ["a", "c"]
    assert [f["_key"] for f in store.files_pending_write("lib1", "a", 10)] == ["c"]
    store.record_writes(
        [
            {"_key": "a", "written_at": 9, "write_error": None, "file_tags_pending": False},
            {"_key": "c", "written_at": None, "write_error": "denied", "file_tags_pending": True},
        ]
    )
    assert [f["_key"] for f in store.files_pending_write("lib1", None, 10)] == ["c"]
    (c,) = store.get_files(["c"])
    assert c["write_error"] == "denied"


def test_a_write_clears_pending_only_while_the_file_keeps_the_hash_it_was_written_for(store: Store) -> None:
    """A recalibration that finishes while a batch writes a file gives it new tiers and marks
    it pending again; the batch's record must not take that back."""
    store.upsert_files([_file(key, file_tags_pending=True, calibration_hash="h1") for key in "abc"])
    store.upsert_files([{"_key": "b", "calibration_hash": "h2"}, {"_key": "c", "calibration_hash": None}])
    store.record_writes(
        [
            {"_key": key, "written_at": 9, "write_error": None, "file_tags_pending": False,
             "written_for_hash": "h1"}
            for key in "abc"
        ]
    )
    assert [f["_key"] for f in store.files_pending_write("lib1", None, 10)] == ["b", "c"]
    assert {f["_key"]: f["written_at"] for f in store.get_files(list("abc"))} == {"a": 9, "b": 9, "c": 9}
    assert "written_for_hash" not in store.get_files(["a"])[0]
    store.record_writes([{"_key": "c", "file_tags_pending": False, "written_for_hash": None}])
    assert [f["_key"] for f in store.files_pending_write("lib1", None, 10)] == ["b"]


def test_tag_writers_stats_are_known_until_the_write_is_recorded(store: Store) -> None:
    store.upsert_files([_file("a", file_tags_pending=True), _file("b")])
    # Before each rename: the copy's stat, appended (two writers at once keep both).
    store.add_written_stats(
        [{"_key": "a", "size": 12, "mtime_ns": 300}, {"_key": "ghost", "size": 1, "mtime_ns": 1}]
    )
    store.add_written_stats([{"_key": "a", "size": 13, "mtime_ns": 301}])
    index = store.file_index("lib1")
    assert index["/music/a.mp3"] == _stat("a", 10, 100, [[12, 300], [13, 301]])
    assert index["/music/b.mp3"] == _stat("b", 10, 100)
    (a,) = store.get_files(["a"])
    assert a["written_stats"] == [[12, 300], [13, 301]] and a["file_tags_pending"] is True
    assert store.get_files(["ghost"]) == [], "a stat for an unknown file creates nothing"
    # After: the final stat, the written ones cleared. A record never creates a file either.
    store.record_writes(
        [
            {"_key": "a", "size": 12, "mtime_ns": 300, "written_stats": None, "written_at": 5,
             "write_error": None, "file_tags_pending": False},
            {"_key": "ghost", "written_at": 1},
        ]
    )  # fmt: skip
    assert store.file_index("lib1")["/music/a.mp3"] == _stat("a", 12, 300)
    assert store.get_files(["ghost"]) == []
    # A file whose audio changed loses the writers' stats with the rest of its analysis state.
    store.add_written_stats([{"_key": "b", "size": 7, "mtime_ns": 7}])
    store.upsert_files([{"_key": "b", "size": 99, "mtime_ns": 99, **STALE_ANALYSIS_RESET}])
    assert store.file_index("lib1")["/music/b.mp3"] == _stat("b", 99, 99)


def test_file_counts_of_an_empty_store_are_zero(store: Store) -> None:
    assert set(store.file_counts().values()) == {0}


def _analysed(store: Store, keys: Sequence[str]) -> None:
    store.record_analysis([{"_key": k, "analyzed_at": 1, "analysis_error": None} for k in keys])


def test_claims_take_mismatching_files_once_and_keep_them_mismatching(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b"), _file("c"), _file("d"), _file("x", library_id="lib2")])
    store.write_predictions([_tag(k, "happy", 0.5) for k in ("a", "b", "c", "d", "x")])
    _analysed(store, ["a", "b", "c", "x"])  # d is not analysed: nothing to calibrate
    store.upsert_files([{"_key": "c", "calibration_hash": "H"}])
    assert store.claim_files_for_recalibration("H", "run1:", "run1:1", 1, "lib1") == ["a"]
    assert store.claim_files_for_recalibration("H", "run1:", "run1:2", 10, "lib1") == ["b"]
    assert store.claim_files_for_recalibration("H", "run1:", "run1:3", 10, "lib1") == []
    assert [f["calibration_hash"] for f in store.get_files(["a", "b"])] == ["run1:1", "run1:2"]
    # Claimed files still need recalibration: a crash now loses nothing.
    assert store.count_files_needing_recalibration("H", "lib1") == 2
    # Another run (a crashed or concurrent one) takes them over.
    assert store.claim_files_for_recalibration("H", "run2:", "run2:1", 10) == ["a", "b", "x"]
    with pytest.raises(ValueError, match="must start with its run"):
        store.claim_files_for_recalibration("H", "run3:", "run2:9", 10)


def test_tier_inputs_carry_the_value_a_finished_recalibration_stores(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b")])
    store.write_predictions(
        [_tag("a", "happy", 0.5, std=0.2), _tag("a", "bad", 0.7), _tag("a", "unknown", 0.7),
         _tag("b", "happy", 0.95)]
    )  # fmt: skip
    store.save_calibrations([_state("happy", 0.1, 0.9), _state("bad", 0.5, 0.5)], [])
    rows = store.tier_inputs(["a"])
    assert all(isinstance(row, tuple) and len(row) == len(TIER_INPUT_FIELDS) for row in rows)
    inputs = {row[2]: dict(zip(TIER_INPUT_FIELDS, row, strict=True)) for row in rows}
    assert set(inputs) == {"happy", "bad", "unknown"}
    assert inputs["happy"] == {"file_id": "a", "head_name": HEAD.head_name, "label": "happy", "std": 0.2,
                               "calibrated_value": pytest.approx(0.5)}  # fmt: skip
    assert inputs["bad"]["calibrated_value"] is None  # p95 <= p5
    assert inputs["unknown"]["calibrated_value"] is None  # no calibration
    assert all(t["calibrated_value"] is None for t in store.file_tags_for_files(["a"]))  # read only
    _analysed(store, ["a"])
    assert store.claim_files_for_recalibration("H", "run:", "run:1", 10) == ["a"]
    store.finish_claimed_recalibration("run:1", "H", {"a": None})
    stored = {t["label"]: t["calibrated_value"] for t in store.file_tags_for_files(["a"])}
    assert stored == {label: t["calibrated_value"] for label, t in inputs.items()}  # to the last bit
    assert store.tier_inputs([]) == []


def test_finish_stores_only_files_that_still_hold_the_claim(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b"), _file("c")])
    store.write_predictions([_tag("a", "happy", 0.5), _tag("b", "happy", 0.95), _tag("c", "happy", 0.3)])
    _analysed(store, ["a", "b", "c"])
    store.save_calibrations([_state("happy", 0.1, 0.9)], [])
    assert store.claim_files_for_recalibration("H", "claim:", "claim:1", 2) == ["a", "b"]
    tiers = {"mood-strict": [], "mood-regular": [], "mood-loose": ["happy"]}
    # New predictions for b after its tiers were computed: its claim is void.
    store.write_predictions([_tag("b", "happy", 0.2)])
    assert store.finish_claimed_recalibration("claim:1", "H", {"a": tiers, "b": tiers}) == ["a"]
    a, b, c = store.get_files(["a", "b", "c"])
    assert (a["calibration_hash"], a["mood_tiers"], a["file_tags_pending"]) == ("H", tiers, True)
    assert b["calibration_hash"] is None and b["mood_tiers"] is None and c["calibration_hash"] is None
    calibrated = {t["file_id"]: t["calibrated_value"] for t in store.file_tags_for_files(["a", "b", "c"])}
    assert calibrated == {"a": pytest.approx(0.5), "b": None, "c": None}
    assert store.count_files_needing_recalibration("H") == 2
    assert store.finish_claimed_recalibration("claim:1", "H", {}) == []


def test_batches_finished_at_once_by_several_processes_each_land_whole(store: Store) -> None:
    """What recalibration relies on where ``concurrent_writers`` is true (its reader processes
    finish their own batches): finishes of different claims on different connections at once
    each store their batch whole. Copies of the store connect anew, as a process's do."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    assert store.concurrent_writers is (store.engine == "postgres")
    keys = [f"f{i:02d}" for i in range(12)]
    store.upsert_files([_file(k) for k in keys])
    store.write_predictions(
        [_tag(k, label, 0.05 * i) for i, k in enumerate(keys) for label in ("happy", "bad")]
    )
    _analysed(store, keys)
    store.save_calibrations([_state("happy", 0.1, 0.9)], [])
    claims = {
        f"claim:{n}": store.claim_files_for_recalibration("H", "claim:", f"claim:{n}", 4) for n in range(3)
    }
    together = Barrier(len(claims))

    def finish(claim: str) -> list[str]:
        finisher = pickle.loads(pickle.dumps(store))
        try:
            together.wait(timeout=30)
            return finisher.finish_claimed_recalibration(
                claim, "H", {k: {"mood-loose": [k]} for k in claims[claim]}
            )
        finally:
            finisher.close()

    with ThreadPoolExecutor(len(claims)) as pool:
        finished = dict(zip(claims, pool.map(finish, claims), strict=True))
    assert finished == claims and sorted(k for ks in finished.values() for k in ks) == keys
    assert store.count_files_needing_recalibration("H") == 0
    for doc in store.get_files(keys):
        assert (doc["calibration_hash"], doc["mood_tiers"]) == ("H", {"mood-loose": [doc["_key"]]})
    for tag in store.file_tags_for_files(keys):
        expected = None if tag["label"] == "bad" else min(max((tag["value"] - 0.1) / 0.8, 0.0), 1.0)
        assert tag["calibrated_value"] == pytest.approx(expected)


def test_finish_is_all_or_nothing(store: Store) -> None:
    store.upsert_files([_file("a"), _file("b")])
    store.write_predictions([_tag("a", "happy", 0.5), _tag("b", "happy", 0.95)])
    _analysed(store, ["a", "b"])
    store.save_calibrations([_state("happy", 0.1, 0.9)], [])
    assert store.claim_files_for_recalibration("H", "claim:", "claim:1", 10) == ["a", "b"]
    unstorable = {"mood-loose": object()}  # fails while the batch is being stored
    with pytest.raises((TypeError, ValueError)):
        store.finish_claimed_recalibration("claim:1", "H", {"a": {"mood-loose": []}, "b": unstorable})
    assert all(t["calibrated_value"] is None for t in store.file_tags_for_files(["a", "b"]))
    assert [f["calibration_hash"] for f in store.get_files(["a", "b"])] == ["claim:1", "claim:1"]
    assert store.count_files_needing_recalibration("H") == 2


def _every_document(store: Store, collection: str, batch_size: int) -> list[dict[str, object]]:
    pages = list(store.iter_documents(collection, batch_size=batch_size))
    assert all(0 < len(page) <= batch_size for page in pages)
    return [doc for page in pages for doc in page]


def test_documents_are_counted_read_in_pages_and_put_back_whole(store: Store) -> None:
    lib = {"_key": "lib1", "name": "Music", "root_path": "/music", "file_write_mode": "full"}
    store.ensure_library(lib)
    tiers = {"mood-strict": [], "mood-regular": ["happy"], "mood-loose": ["happy"]}
    store.upsert_files(
        [_file("a", mood_tiers=tiers, calibration_hash="H"), _file("b"), _file("c", library_id="lib2")]
    )
    store.write_predictions([_tag(k, label, 0.25) for k in ("a", "b") for label in ("happy", "sad")])
    history = {"_key": "h1", "calibration_key": "m:h:happy", "snapshot_at": 3, "p5": 0.1, "p95": 0.9,
               "n": 4, "underflow_count": 0, "overflow_count": 0, "p5_delta": None, "p95_delta": None,
               "n_delta": None}  # fmt: skip
    store.save_calibrations([_state("happy", 0.1, 0.9)], [history])
    store.record_analysis_errors([_error("c", OTHER)])
    counts = {c: store.count_documents(c) for c in DOCUMENT_COLLECTIONS}
    assert counts == {"libraries": 1, "library_files": 3, "file_tags": 4, "analysis_errors": 1,
                      "calibration_state": 1, "calibration_history": 1}  # fmt: skip
    (error,) = _every_document(store, "analysis_errors", 1)
    store.put_documents("analysis_errors", [{**error, "error": "put back"}])
    assert [e["error"] for e in _every_document(store, "analysis_errors", 1)] == ["put back"]

    assert _every_document(store, "library_files", 2) == store.get_files(["a", "b", "c"])
    tags = _every_document(store, "file_tags", 3)
    assert sorted(tags, key=lambda t: str(t["_key"])) == store.file_tags_for_files(["a", "b"])
    history_docs = _every_document(store, "calibration_history", 1)
    assert history_docs == store.recent_history(["m:h:happy"])["m:h:happy"]
    assert _every_document(store, "libraries", 5) == store.list_libraries()

    # Put back changed: whole documents replace the stored ones, no pipeline side effects.
    store.upsert_files([{"_key": "a", "calibration_hash": "H"}])
    changed = [{**t, "value": 0.75, "calibrated_value": 0.5} for t in tags if t["file_id"] == "a"]
    store.put_documents("file_tags", changed)
    assert store.get_files(["a"])[0]["calibration_hash"] == "H"  # not cleared
    assert {t["label"]: t["value"] for t in store.file_tags_for_files(["a"])} == {"happy": 0.75, "sad": 0.75}
    store.put_documents("library_files", [{"_key": "b", "library_id": "lib1", "path": "/music/b2.mp3"}])
    (b,) = store.get_files(["b"])
    assert b["path"] == "/music/b2.mp3" and b["size"] is None and b["scanned_at"] is None
    store.put_documents("calibration_history", [{**history, "_key": "h2", "snapshot_at": 4}])
    assert store.count_documents("calibration_history") == 2
    with pytest.raises(ValueError, match="not a document collection"):
        store.count_documents("library_folders")
