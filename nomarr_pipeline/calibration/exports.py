"""Sidecars and ``calibrations.json``: exports of ``calibration_state``, and the import that
bootstraps it (docs/ARCHITECTURE.md §6).

Exports hold the usable calibrations only (``state.is_usable``) and are written atomically;
a failed sidecar write is a warning in the report, never an exception that could undo a DB
change. Sidecar layout: ``<dest>/<model_key>/<head_name>-calibration-v<version>.json`` (a
folder per backbone keeps ``mood_happy`` of effnet and of musicnn apart)::

    {"model": "...", "head": "mood_happy", "version": 1, "method": "histogram",
     "generated_at": "2026-01-16T12:00:00Z",
     "labels": {"happy": {"p5": ..., "p95": ..., "n": ..., "underflow_count": ...,
                          "overflow_count": ..., "histogram": {...}}}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.calibration.state import calibration_key, is_usable, state_doc, usable_percentiles
from nomarr_pipeline.store import Doc

log = logging.getLogger(__name__)


PACKAGE_FILENAME = "calibrations.json"
PACKAGE_VERSION = "1.0"
PACKAGE_METHOD = "histogram"


class InvalidPackageError(ValueError):
    """A calibration package that cannot be imported; the message names the bad entry."""


@dataclass
class ExportReport:
    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)  # p5 == p95: imported, never applied
    unknown: list[str] = field(default_factory=list)  # labels of heads not in the models folder: not imported


def iso_utc(epoch_ms: int | None = None) -> str:
    """``2026-01-16T12:00:00Z`` (seconds precision, UTC)."""
    moment = datetime.now(UTC) if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def sidecar_path(dest: Path, model_key: str, head_name: str, version: int) -> Path:
    return Path(dest) / model_key / f"{head_name}-calibration-v{version}.json"


def _label_numbers(state: Mapping[str, Any]) -> Doc:
    return {
        "p5": state["p5"],
        "p95": state["p95"],
        "n": state["n"],
        "underflow_count": state.get("underflow_count", 0),
        "overflow_count": state.get("overflow_count", 0),
        "histogram": state.get("histogram"),
    }


def export_sidecars(
    states: Iterable[Mapping[str, Any]], dest: Path, *, now_ms: int | None = None
) -> ExportReport:
    """One sidecar per head, labels sorted by name; every failure is a warning in the report,
    never an exception."""
    report = ExportReport()
    generated_at = iso_utc(now_ms)
    heads: dict[tuple[str, str, int], dict[str, Doc]] = defaultdict(dict)
    try:
        for state in filter(is_usable, states):
            head = (state["model_key"], state["head_name"], state["version"])
            heads[head][state["label"]] = _label_numbers(state)
    except (KeyError, TypeError) as error:
        report.warnings.append(f"calibration states could not be read for export: {error!r}")
        return report
    for (model_key, head_name, version), labels in sorted(heads.items()):
        path = sidecar_path(Path(dest), model_key, head_name, version)
        document = {
            "model": model_key,
            "head": head_name,
            "version": version,
            "method": PACKAGE_METHOD,
            "generated_at": generated_at,
            "labels": dict(sorted(labels.items())),
        }
        try:
            write_json_atomic(path, document)
        except (OSError, ValueError, TypeError) as error:
            message = f"sidecar {path} not written: {error}"
            log.warning(message)
            report.warnings.append(message)
        else:
            report.written.append(path)
    return report


def package_document(states: Iterable[Mapping[str, Any]], exported_at: str) -> Doc:
    entries = [
        {
            **_label_numbers(state),
            "key": state["_key"],
            "model": state["model_key"],
            "head": state["head_name"],
            "label": state["label"],
            "version": state["version"],
            "histogram": state["histogram"],
        }
        for state in states
        if is_usable(state)
    ]
    entries.sort(key=lambda entry: entry["key"])
    return {
        "version": PACKAGE_VERSION,
        "exported_at": exported_at,
        "method": PACKAGE_METHOD,
        "calibrations": entries,
    }


def export_package(states: Iterable[Mapping[str, Any]], dest: Path, *, now_ms: int | None = None) -> Path:
    """Write ``<dest>/calibrations.json`` atomically and return its path; raises ``OSError``
    when it cannot be written (the package is an asset of its own: its failure should show)."""
    path = Path(dest) / PACKAGE_FILENAME
    write_json_atomic(path, package_document(states, iso_utc(now_ms)))
    return path


_ENTRY_FIELDS = (
    "key", "model", "head", "label", "version", "p5", "p95", "n",
    "underflow_count", "overflow_count", "histogram",
)  # fmt: skip


def _reject_constant(name: str) -> Any:
    raise InvalidPackageError(f"calibration package contains {name}, which is not valid JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_entry(index: int, entry: Any) -> tuple[Doc, bool]:
    """The state document of one package entry, and whether it is unusable (p5 == p95)."""
    where = f"calibrations[{index}]"
    if not isinstance(entry, dict):
        raise InvalidPackageError(f"{where} must be an object, got {type(entry).__name__}")
    if isinstance(entry.get("key"), str):
        where = f"{where} ({entry['key']!r})"
    missing = [name for name in _ENTRY_FIELDS if name not in entry]
    if missing:
        raise InvalidPackageError(f"{where} lacks field(s) {', '.join(missing)}")
    for name in ("key", "model", "head", "label"):
        if not isinstance(entry[name], str) or not entry[name]:
            raise InvalidPackageError(f"{where}: {name} must be a non-empty string")
    expected_key = calibration_key(entry["model"], entry["head"], entry["label"])
    if entry["key"] != expected_key:
        raise InvalidPackageError(f"{where}: key does not match model:head:label (expected {expected_key!r})")
    if not _is_int(entry["version"]) or entry["version"] < 0:
        raise InvalidPackageError(f"{where}: version must be a non-negative integer")
    for name in ("p5", "p95"):
        if not _is_finite_number(entry[name]):
            raise InvalidPackageError(f"{where}: {name} must be a finite number")
    for name in ("n", "underflow_count", "overflow_count"):
        if not _is_int(entry[name]) or entry[name] < 0:
            raise InvalidPackageError(f"{where}: {name} must be a non-negative integer")
    if entry["n"] < 1:
        raise InvalidPackageError(f"{where}: n must be at least 1 (a calibration needs values)")
    if entry["underflow_count"] + entry["overflow_count"] > entry["n"]:
        raise InvalidPackageError(f"{where}: underflow_count + overflow_count exceed n")
    if entry["p5"] > entry["p95"]:
        raise InvalidPackageError(f"{where}: p5 {entry['p5']} is greater than p95 {entry['p95']}")
    histogram = entry["histogram"]
    if not isinstance(histogram, dict):
        raise InvalidPackageError(f"{where}: histogram must be an object")
    try:
        spec = HistogramSpec.from_doc(histogram)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidPackageError(f"{where}: invalid histogram: {error}") from None
    for name in ("p5", "p95"):
        if not spec.lo <= entry[name] <= spec.hi:
            raise InvalidPackageError(
                f"{where}: {name} {entry[name]} outside the histogram range [{spec.lo}, {spec.hi}]"
            )
    numbers = PercentileResult(
        float(entry["p5"]), float(entry["p95"]), entry["n"], entry["underflow_count"], entry["overflow_count"]
    )
    state = state_doc(entry["model"], entry["head"], entry["label"], entry["version"], spec, numbers)
    return state, not usable_percentiles(entry["p5"], entry["p95"])


def parse_package_file(path: Path) -> tuple[list[Doc], list[str]]:
    """State documents of a package file and the keys whose ``p5 == p95`` (never applied)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidPackageError(f"cannot read calibration package {path}: {error}") from None
    try:
        package = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidPackageError(f"calibration package is not valid JSON: {error}") from None
    if not isinstance(package, dict):
        raise InvalidPackageError("calibration package must be a JSON object")
    for name, wanted in (("version", PACKAGE_VERSION), ("method", PACKAGE_METHOD)):
        if package.get(name) != wanted:
            raise InvalidPackageError(
                f"calibration package {name} must be {wanted!r}, got {package.get(name)!r}"
            )
    entries = package.get("calibrations")
    if not isinstance(entries, list):
        raise InvalidPackageError("calibration package needs a 'calibrations' list")
    states: list[Doc] = []
    unusable: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        state, is_unusable = _validate_entry(index, entry)
        if state["_key"] in seen:
            raise InvalidPackageError(f"calibrations[{index}]: duplicate key {state['_key']!r}")
        seen.add(state["_key"])
        states.append(state)
        if is_unusable:
            unusable.append(state["_key"])
    return states, unusable


def import_package(
    store: Any,
    path: Path,
    now_ms: int,
    *,
    overwrite: bool = False,
    known_heads: Mapping[tuple[str, str], Collection[str]] | None = None,
) -> ImportReport:
    """Bootstrap ``calibration_state`` from a package in one ``save_calibrations`` call, without
    history (nothing was computed here). Existing calibrations win unless ``overwrite``. With
    ``known_heads`` ((model_key, head_name) -> labels of the models folder) labels of other
    heads are left out, listed in ``unknown``: a package for other models must not pass."""
    states, unusable_keys = parse_package_file(path)
    unusable = set(unusable_keys)
    report = ImportReport()
    to_save: list[Doc] = []
    stored = store.get_calibrations([state["_key"] for state in states])
    for state in states:
        if known_heads is not None and state["label"] not in known_heads.get(
            (state["model_key"], state["head_name"]), ()
        ):
            report.unknown.append(state["_key"])
            continue
        if state["_key"] in unusable:
            report.unusable.append(state["_key"])
        existing = stored.get(state["_key"])
        if existing is not None and not overwrite:
            report.skipped_existing.append(state["_key"])
            continue
        created_at = existing.get("created_at") if existing else None
        to_save.append(
            {
                **state,
                "imported": True,
                "imported_at": now_ms,
                "adopted_at": now_ms,
                "created_at": created_at or now_ms,
                "updated_at": now_ms,
                "last_computation_at": now_ms,
            }
        )
        report.imported.append(state["_key"])
    if to_save:
        store.save_calibrations(to_save, [])
    return report
