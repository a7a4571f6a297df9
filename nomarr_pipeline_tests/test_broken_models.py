"""Issue 14, item 2 and issue 25, items 1-3: one broken model must not poison the library.

Real ``nomarr-pipeline run`` processes on a library with real generated broken models (a head
whose ``.pb`` is garbage, one whose output is narrower than its JSON's labels, a musicnn head's
graph in an effnet head's place) and a truncated file that can never be decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from nomarr_pipeline.ml.analysis import BROKEN_AFTER, head_version
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.broken_models import (
    write_garbage_head,
    write_nan_head,
    write_other_backbones_head,
    write_width_mismatch_head,
)
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head
from nomarr_pipeline_tests.store_dump import library_files

pytestmark = pytest.mark.slow
GOOD = "effnet-discogs-effnet-1:mood_happy"
GARBAGE = "effnet-discogs-effnet-1:mood_sad"
NARROW = "effnet-discogs-effnet-1:mood_party"
OTHER_BACKBONE = "effnet-discogs-effnet-1:mood_relaxed"
NAN = "effnet-discogs-effnet-1:broken"


def _status(folder: PipelineFolder) -> dict[str, int]:
    command = folder.run("status")
    assert command.returncode == 0, command.stderr
    (row,) = pd.read_csv(io.StringIO(command.stdout), sep=r"\s{2,}", engine="python").to_dict("records")
    return {column: row[column] for column in ("files", "analysed", "failed", "pending writes")}


def test_a_broken_model_fails_the_run_by_name_and_blocks_nothing(tmp_path: Path) -> None:
    folder = PipelineFolder(tmp_path)
    write_demo_models(folder.models, heads=("mood_happy-discogs-effnet-1",))
    write_garbage_head(folder.models)
    write_width_mismatch_head(folder.models)
    write_other_backbones_head(folder.models)
    names = [f"track{i}.wav" for i in range(4)]
    for seed, name in enumerate(names):
        make_audio(folder.library / name, 3.0, seed=seed)
    # A truncated Ogg file: the scan reads its header, no decoder gets any audio out of it.
    whole = make_audio(tmp_path / "whole.ogg", 30.0, seed=9).read_bytes()
    (folder.library / "truncated.ogg").write_bytes(whole[:4000])

    first = folder.run("run")
    # Checked before they run, so never tried on a file, in this run or the next.
    again = folder.run("run")

    for command in (first, again):
        assert command.returncode == 1, command.stdout + command.stderr
        (line,) = [line for line in command.stdout.splitlines() if line.strip().startswith("head discovery")]
        assert "failed" in line and "3 broken model(s)" in line
        assert "mood_sad-discogs-effnet-1.pb" in line and "cannot load" in line
        assert f"({NARROW})" in line and "its JSON lists 3 labels" in line
        assert f"({OTHER_BACKBONE})" in line and "takes 200-wide embeddings" in line and "gives 1280" in line
        (line,) = [line for line in command.stdout.splitlines() if line.strip().startswith("predictions")]
        assert " ok " in line
    with folder.store() as store:
        files = {Path(f["path"]).name: f for f in library_files(store)}
        good = [files[name]["_key"] for name in names]
        # every decodable file got the working head's predictions, and is not failed itself
        assert {(t["file_id"], t["head_name"]) for t in store.file_tags_for_files(good)} == {
            (key, "mood_happy") for key in good}
        assert all(files[name]["analysis_error"] is None for name in names)
        truncated = files["truncated.ogg"]
        assert truncated["analysis_error"].startswith("cannot decode audio")
        assert truncated["analyzed_at"] is None and truncated["file_tags_pending"] is False
        assert store.count_documents("analysis_errors") == 0
    # No file counts as failed for a head that never ran; status names the heads apart.
    assert _status(folder) == {"files": 5, "analysed": 4, "failed": 1, "pending writes": 0}
    status = folder.run("status")
    for key in (GARBAGE, NARROW, OTHER_BACKBONE):
        assert f"head unavailable: {key}: cannot run" in status.stderr
    assert status.stderr.count("next: replace or remove the model") == 3
    listing = folder.run("models", "list")
    assert "3 problems" in listing.stdout and "its graph takes 200-wide embeddings" in listing.stdout
    assert "next: replace or remove the model (`nomarr-pipeline models fetch mood_sad-discogs-effnet-1`)" in (
        listing.stdout)

    # Repair one model, remove the others: the repaired head analyses every file; nothing was
    # blocked, and the truncated file is never pending.
    write_demo_head(folder.models, "mood_sad-discogs-effnet-1", ("sad", "non_sad"))
    for leftover in [*folder.models.glob("mood_party-*"), *folder.models.glob("mood_relaxed-*")]:
        leftover.unlink()
    second = folder.run("run")

    assert second.returncode == 0, second.stdout + second.stderr
    with folder.store() as store:
        assert {t["head_name"] for t in store.file_tags_for_files(good)} == {"mood_happy", "mood_sad"}
        heads = discover_models(folder.models).heads
        assert store.count_files_with_analysis_errors([head_version(h) for h in heads]) == 0
    assert _status(folder) == {"files": 5, "analysed": 4, "failed": 1, "pending writes": 0}
    assert "Traceback" not in first.stderr + second.stderr


def test_a_model_broken_at_run_time_is_remembered_until_its_file_changes(tmp_path: Path) -> None:
    folder = PipelineFolder(tmp_path)
    write_demo_models(folder.models, heads=("mood_happy-discogs-effnet-1",))
    write_nan_head(folder.models)  # passes validation, outputs NaN on every file
    names = [f"track{i}.wav" for i in range(BROKEN_AFTER + 4)]
    for seed, name in enumerate(names):
        make_audio(folder.library / name, 3.0, seed=seed)

    nan_version = [head_version(h) for h in discover_models(folder.models).heads if h.partition_key == NAN]
    first = folder.run("run")
    with folder.store() as store:
        # stopped after its first files (and those already given to the other worker)
        failed_files = store.count_files_with_analysis_errors(nan_version)
    assert BROKEN_AFTER <= failed_files < len(names)
    # The next run does not try it on more files: it is broken until its model file changes.
    again = folder.run("run")

    for command in (first, again):
        assert command.returncode == 1, command.stdout + command.stderr
        (line,) = [line for line in command.stdout.splitlines() if line.strip().startswith("predictions")]
        assert "failed" in line and NAN in line and "NaN" in line, line
    with folder.store() as store:
        assert store.count_files_with_analysis_errors(nan_version) == failed_files
        good = [f["_key"] for f in library_files(store)]
        assert {(t["file_id"], t["head_name"]) for t in store.file_tags_for_files(good)} == {
            (key, "mood_happy") for key in good}
    # The files did not fail: the model did.
    assert {k: v for k, v in _status(folder).items() if k != "pending writes"} == {
        "files": len(names), "analysed": len(names), "failed": 0}

    # A replaced model file is tried again (on every file).
    write_demo_head(folder.models, "broken-discogs-effnet-1", ("broken", "non_broken"))
    repaired = folder.run("run")

    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    with folder.store() as store:
        assert {(t["file_id"], t["head_name"]) for t in store.file_tags_for_files(good)} == {
            (key, head) for key in good for head in ("mood_happy", "broken")}
    assert _status(folder) == {"files": len(names), "analysed": len(names), "failed": 0, "pending writes": 0}
    assert "Traceback" not in first.stderr + again.stderr + repaired.stderr
