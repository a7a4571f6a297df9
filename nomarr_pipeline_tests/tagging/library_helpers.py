"""A library in a real SQLite store as scan, analysis and recalibration leave it, for the
tag-writing tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.calibration.state import compute_state
from nomarr_pipeline.library.scanner import scan_library
from nomarr_pipeline.store import Store
from nomarr_pipeline.tagging.batch import write_pending_tags
from nomarr_pipeline_tests.store_dump import library_files
from nomarr_pipeline_tests.tagging.audio_helpers import stat_of

LIB = "lib"
MODEL = "effnet-discogs-effnet-1"
TIERS = {
    "mood-strict": ["happy"],
    "mood-regular": ["happy", "party"],
    "mood-loose": ["happy", "party", "relaxed"],
}


def library_doc(root: Path, mode: str = "full", write_raw_scores: bool = False) -> dict[str, Any]:
    return {
        "_key": LIB,
        "name": "Test library",
        "root_path": str(root),
        "auto_write_tags": False,
        "file_write_mode": mode,
        "write_raw_scores": write_raw_scores,
    }


def predictions(file_id: str) -> list[dict[str, Any]]:
    rows = [("mood_happy", "happy", 0.8, 0.9), ("genre_discogs400", "Electronic---House", 0.25, None)]
    return [
        {
            "_key": f"{file_id}|{MODEL}|{head}|{label}",
            "file_id": file_id,
            "model_key": MODEL,
            "head_name": head,
            "label": label,
            "value": value,
            "std": 0.01,
            "calibrated_value": calibrated,
            "nomarr_only": True,
            "tagger_version": "nomarr-test-7",
        }
        for head, label, value, calibrated in rows
    ]


def register(store: Store, files: dict[str, Path], *, stat_from_disk: bool = True) -> None:
    """Scan, analysis and recalibration results for ``files`` as the other stages leave them."""
    docs = []
    for key, path in files.items():
        size, mtime_ns = stat_of(path) if stat_from_disk else (1, 1)
        docs.append({"_key": key, "library_id": LIB, "path": str(path), "size": size, "mtime_ns": mtime_ns,
                     "scanned_at": 1, "file_tags_pending": False})  # fmt: skip
    store.upsert_files(docs)
    analysed_and_calibrated(store, list(files))


def analysed_and_calibrated(store: Store, keys: list[str]) -> None:
    """Predictions and mood tiers for ``keys``, which are now pending writes."""
    store.write_predictions([doc for key in keys for doc in predictions(key)])
    store.upsert_files(
        [
            {"_key": key, "calibration_hash": "h", "mood_tiers": TIERS, "file_tags_pending": True}
            for key in keys
        ]
    )


def scanned_library(store: Store, root: Path) -> tuple[str, dict[str, Path]]:
    """``root`` scanned by the real scanner, then analysed and calibrated: (library key, files)."""
    report = scan_library(store, root)
    files = {doc["_key"]: Path(doc["path"]) for doc in library_files(store, report.library_id)}
    analysed_and_calibrated(store, list(files))
    return report.library_id, files


def run(store: Store, root: Path | list[Path], *, has_calibration: bool = True, **kwargs: Any) -> Any:
    roots = root if isinstance(root, list) else [root]
    library = store.get_library(LIB)
    assert library is not None
    return write_pending_tags(
        store, library=library, library_roots=roots, has_calibration=has_calibration, **kwargs
    )


def file_doc(store: Store, key: str) -> dict[str, Any]:
    (doc,) = store.get_files([key])
    return doc


def calibration(head: str, label: str, p5: float, p95: float) -> dict[str, Any]:
    """A calibration in force for one label of ``MODEL``."""
    state, _ = compute_state(
        None, model_key=MODEL, head_name=head, label=label, version=1, spec=HistogramSpec(),
        result=PercentileResult(p5, p95, 100, 0, 0), now_ms=1_768_564_800_000,
    )  # fmt: skip
    return state
