"""Hash-based recalibration (seed 003): bring every file to the calibration in force.

``expected = expected_calibration_hash(calibration_state)``; files whose stored
``calibration_hash`` differs are processed in batches, each in one store transaction
(``store.recalibrate_files``), so predictions written meanwhile cannot slip in between:

1. ``apply_calibration``: calibrated values, set-based in the DB;
2. the batch's predictions read back, to compute mood tiers;
3. hash, tiers and ``file_tags_pending`` set on the files.

A file gets the expected hash only together with its tiers, so a crash leaves finished
files finished and the rest still mismatching: a rerun resumes where it stopped. The hash
is computed once per run; calibrations that change during a run make the next run redo
the files this one finished (never the reverse). Memory is one batch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.state import Doc
from nomarr_pipeline.calibration.tiers import TierConfig, compute_mood_tiers
from nomarr_pipeline.store.protocol import Store

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (files recalibrated so far, last batch size)


class RecalibrationStalledError(RuntimeError):
    """The store kept returning files this run already finished: their hash did not stick."""


@dataclass(frozen=True)
class RecalibrationReport:
    expected_hash: str
    recalibrated: int
    batches: int
    remaining: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.remaining == 0


def recalibration_status(store: Store, library_id: str | None = None) -> dict[str, object]:
    """What a sensor needs: the expected hash and how many files do not carry it yet."""
    expected = expected_calibration_hash(store.list_calibrations())
    return {
        "expected_hash": expected,
        "remaining": store.count_files_needing_recalibration(expected, library_id),
    }


def recalibrate(
    store: Store,
    *,
    tier_config: TierConfig | None = None,
    batch_size: int = 1000,
    library_id: str | None = None,
    progress: ProgressCallback | None = None,
    max_files: int | None = None,
) -> RecalibrationReport:
    """Recalibrate every file whose hash differs from the expected one (or ``max_files`` of
    them, so a sensor-triggered run can be kept short; the rest waits for the next run)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    config = tier_config or TierConfig()
    expected = expected_calibration_hash(store.list_calibrations())
    recalibrated = 0
    batches = 0
    previous_batch: list[str] = []
    while max_files is None or recalibrated < max_files:
        limit = batch_size if max_files is None else min(batch_size, max_files - recalibrated)
        file_ids = store.files_needing_recalibration(expected, limit, library_id)
        if not file_ids:
            break
        if file_ids == previous_batch:
            raise RecalibrationStalledError(
                f"files {file_ids[:3]}... still need recalibration after being finished"
            )
        recalibrate_batch(store, file_ids, expected, config)
        previous_batch = file_ids
        recalibrated += len(file_ids)
        batches += 1
        if progress is not None:
            progress(recalibrated, len(file_ids))
    remaining = store.count_files_needing_recalibration(expected, library_id)
    seconds = time.perf_counter() - started
    log.info(
        "recalibrated %d files in %d batches (%.1f s), %d remaining, hash %s",
        recalibrated, batches, seconds, remaining, expected,
    )  # fmt: skip
    return RecalibrationReport(expected, recalibrated, batches, remaining, seconds)


def recalibrate_batch(
    store: Store, file_ids: list[str], expected_hash: str, config: TierConfig
) -> None:
    """One batch, in one store transaction (so analysis cannot slip in between)."""

    def tiers_of(tags: Sequence[Doc]) -> dict[str, Doc]:
        by_file: dict[str, list[Doc]] = defaultdict(list)
        for tag in tags:
            by_file[tag["file_id"]].append(tag)
        return {file_id: compute_mood_tiers(by_file.get(file_id, ()), config) for file_id in file_ids}

    store.recalibrate_files(file_ids, expected_hash, tiers_of)