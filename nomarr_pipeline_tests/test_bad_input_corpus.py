"""The bad input corpus (issue 14): one library and one models folder holding every kind of bad
input at once, next to good tracks and heads, through the real command line (``nomarr-pipeline
run`` in its own process group, as a user runs it) and the real jobs. Per kind: a clear error
on that file or model only, the run is not aborted, and nothing changes that should not —
byte for byte for what the pipeline must not touch, decoded audio for the files it tags.

Bad configuration (store URL, library roots, write mode, models folder) is
``test_setup_errors.py``'s; the tag writer's own corpus (immutable files, huge cover art, files
re-tagged between analysis and writing) is the tag writer's tests'.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.library.identity import displayable
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.graphdef import GraphBuilder
from nomarr_pipeline.store import Doc
from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head
from nomarr_pipeline_tests.store_dump import library_files
from nomarr_pipeline_tests.tagging.audio_helpers import decoded_audio_hash
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags
from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

pytestmark = pytest.mark.slow

GOOD_HEADS = ("mood_happy-discogs-effnet-1", "danceability-discogs-effnet-1")
GOOD_KEYS = ("effnet-discogs-effnet-1:mood_happy", "effnet-discogs-effnet-1:danceability")
GARBAGE_HEAD = "effnet-discogs-effnet-1:mood_party"  # its .pb is random bytes
MISMATCHED_HEAD = "effnet-discogs-effnet-1:mood_sad"  # its JSON names 3 classes, its graph has 2
NAN_HEAD = "effnet-discogs-effnet-1:mood_relaxed"  # its graph outputs NaN
LONG_NAME = "l" * 240 + ".flac"  # NAME_MAX is 255 bytes


@dataclass
class Corpus:
    folder: PipelineFolder
    outside: Path  # a folder outside the library that links point into
    bytes_before: dict[Path, str]  # files nothing may change: their SHA-256
    audio_before: dict[Path, str]  # files the pipeline tags: their decoded audio
    returncode: int
    stdout: str
    stderr: str
    docs: dict[str, Doc]  # library_files by path relative to the library

    def doc(self, relative: str) -> Doc:
        return self.docs[relative]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_models(models: Path) -> None:
    write_demo_models(models, heads=GOOD_HEADS)
    # A head whose graph is garbage: it passes discovery (its JSON is fine).
    write_demo_head(models, "mood_party-discogs-effnet-1", ("party", "non_party"))
    (models / "mood_party-discogs-effnet-1.pb").write_bytes(np.random.default_rng(1).bytes(4096))
    # A head whose JSON disagrees with its graph: 3 classes, 2 outputs.
    write_demo_head(models, "mood_sad-discogs-effnet-1", ("sad", "non_sad"))
    metadata_path = models / "mood_sad-discogs-effnet-1.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["classes"] = ["sad", "non_sad", "bittersweet"]
    metadata["schema"]["outputs"][0]["shape"] = ["batch_size", 3]
    metadata_path.write_text(json.dumps(metadata))
    # A head whose outputs are NaN: a real graph with a NaN bias, written by ml/graphdef.py.
    write_demo_head(models, "mood_relaxed-discogs-effnet-1", ("relaxed", "non_relaxed"))
    graph = GraphBuilder()
    features = graph.placeholder("model/Placeholder", [-1, 1280])
    logits = graph.dense("model/dense", features, np.zeros((1280, 2)), np.array([np.nan, 0.0]))
    graph.unary("model/Softmax", "Softmax", logits)
    graph.write(models / "mood_relaxed-discogs-effnet-1.pb")
    # A model whose metadata is not JSON: reported, never run.
    (models / "broken-discogs-effnet-1.json").write_text("{ not json")
    (models / "broken-discogs-effnet-1.pb").write_bytes(b"\0" * 64)


def _build_library(library: Path, outside: Path) -> tuple[list[Path], list[Path]]:
    """The corpus; returns (files nothing may change, files the pipeline tags)."""
    library.mkdir(parents=True)
    outside.mkdir(parents=True)
    good = [make_audio(library / "good" / f"track{i}{suffix}", 4.0, seed=i)
            for i, suffix in enumerate((".flac", ".mp3", ".ogg"))]  # fmt: skip
    bad = library / "bad"
    bad.mkdir()
    full = make_audio(bad / "source.flac", 6.0, seed=9)
    data = full.read_bytes()
    full.unlink()
    (bad / "truncated.flac").write_bytes(data[: len(data) // 8])
    header_only = make_audio(outside / "header.mp3", 6.0, seed=10).read_bytes()[:600]
    (bad / "header only.mp3").write_bytes(header_only)
    (bad / "empty.mp3").write_bytes(b"")
    (bad / "random bytes.mp3").write_bytes(np.random.default_rng(2).bytes(50_000))
    (bad / "notes.flac").write_text("this is a text file with an audio extension\n" * 100)
    make_audio(bad / "one second.wav", 1.0, seed=3)
    silent = bad / "silence.wav"
    make_audio(silent, 5.0, seed=4)
    _silence(silent)
    os.mkdir(bad / "album.mp3")  # a folder named like a track, with a track inside
    nested = make_audio(bad / "album.mp3" / "inside.ogg", 4.0, seed=5)
    make_audio(bad / b"caf\xe9 latin-1.wav".decode("utf-8", "surrogateescape"), 4.0, seed=6)
    newline = make_audio(bad / "new\nline.mp3", 4.0, seed=7)
    long_name = make_audio(bad / "long.flac", 4.0, seed=8).rename(bad / LONG_NAME)
    os.symlink("loop.mp3", bad / "loop.mp3")
    os.symlink("ping.ogg", bad / "pong.ogg")
    os.symlink("pong.ogg", bad / "ping.ogg")
    escaped = make_audio(outside / "escaped.flac", 4.0, seed=11)
    os.symlink(escaped, bad / "escape.flac")
    os.symlink(outside, bad / "escape folder")
    os.mkfifo(bad / "pipe.mp3")
    untouched = [
        bad / name
        for name in ("truncated.flac", "header only.mp3", "empty.mp3", "random bytes.mp3", "notes.flac",
                     "one second.wav")
    ] + [escaped, outside / "header.mp3"]  # fmt: skip
    tagged = [*good, silent, nested, newline, long_name]
    return untouched, tagged


def _silence(path: Path) -> None:
    """Keep the WAV header, zero every sample."""
    data = bytearray(path.read_bytes())
    data[44:] = bytes(len(data) - 44)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    folder = PipelineFolder(root)
    _write_models(folder.models)
    outside = root / "outside"
    untouched, tagged = _build_library(folder.library, outside)
    bytes_before = {path: _sha256(path) for path in untouched}
    audio_before = {path: decoded_audio_hash(path) for path in tagged}
    run = folder.run("run", timeout=900)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    with folder.store() as store:
        docs = {
            os.path.relpath(doc["path"], displayable(str(folder.library))): doc
            for doc in library_files(store)
        }
    return Corpus(folder, outside, bytes_before, audio_before, run.returncode, run.stdout, run.stderr, docs)


def _head_errors(corpus: Corpus, file: str | Doc) -> dict[str, str]:
    """The (file, head) analysis errors of one file: partition key -> error."""
    file_id = (corpus.doc(file) if isinstance(file, str) else file)["_key"]
    with corpus.folder.store() as store:
        return {
            f"{doc['model_key']}:{doc['head_name']}": doc["error"]
            for page in store.iter_documents("analysis_errors")
            for doc in page
            if doc["file_id"] == file_id
        }


def _tags(corpus: Corpus, relative: str) -> list[Doc]:
    with corpus.folder.store() as store:
        return store.file_tags_for_files([corpus.doc(relative)["_key"]])


# ---- the run as a whole --------------------------------------------------------------------------


def test_the_run_is_not_aborted_and_shows_no_traceback(corpus: Corpus) -> None:
    """Bad files fail alone; the broken models fail the predictions step (tested below), and
    the pipeline goes on with the good heads."""
    assert "Traceback" not in corpus.stderr + corpus.stdout
    assert corpus.returncode == 1  # the broken models
    summary = corpus.stdout.split("pipeline:", 1)[-1]
    for step in ("scan", "calibration", "recalibration + tag writing"):
        line = next(line for line in summary.splitlines() if line.strip().startswith(step))
        assert line.strip()[len(step):].split()[0] == "ok", summary
    assert "going on without" in corpus.stderr and NAN_HEAD in corpus.stderr


def test_good_files_are_analysed_by_every_good_head_and_tagged(corpus: Corpus) -> None:
    for relative in ("good/track0.flac", "good/track1.mp3", "good/track2.ogg"):
        assert corpus.doc(relative)["scan_error"] is None
        heads = {(t["model_key"], t["head_name"]) for t in _tags(corpus, relative)}
        assert {tuple(key.split(":")) for key in GOOD_KEYS} <= heads, relative
        assert read_nom_tags(corpus.folder.library / relative), relative


def test_files_we_tag_keep_their_audio(corpus: Corpus) -> None:
    for path, decoded in corpus.audio_before.items():
        assert decoded_audio_hash(path) == decoded, path


def test_files_we_must_not_touch_are_byte_for_byte_the_same(corpus: Corpus) -> None:
    for path, digest in corpus.bytes_before.items():
        assert _sha256(path) == digest, path
    assert sorted(p.name for p in corpus.outside.iterdir()) == ["escaped.flac", "header.mp3"]


def test_nothing_of_ours_is_left_in_the_library(corpus: Corpus) -> None:
    ours = [p for p in corpus.folder.library.rglob("*") if "nomarr" in p.name.lower()]
    assert not ours


# ---- per kind --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "error"),
    [
        ("bad/empty.mp3", "empty file (0 bytes)"),
        ("bad/random bytes.mp3", "not readable as audio: HeaderNotFoundError"),
        ("bad/notes.flac", "not readable as audio"),
        ("bad/loop.mp3", "Too many levels of symbolic links"),
        ("bad/ping.ogg", "Too many levels of symbolic links"),
        ("bad/caf\\xe9 latin-1.wav", "not valid UTF-8"),
        ("bad/pipe.mp3", "not a regular file"),
    ],
)
def test_files_that_cannot_be_read_as_audio_get_a_scan_error(
    corpus: Corpus, relative: str, error: str
) -> None:
    doc = corpus.doc(relative)
    assert doc["scan_error"] and error in doc["scan_error"], doc
    assert "\n" not in doc["scan_error"]
    assert not _tags(corpus, relative)


@pytest.mark.parametrize(
    ("relative", "error"),
    [
        # Cut to an eighth: what still decodes is too short to analyse.
        ("bad/truncated.flac", "audio too short: 0."),
        ("bad/header only.mp3", "audio too short: 0."),
        ("bad/one second.wav", "audio too short: 1.00 s gives no analysis patch"),
    ],
)
def test_files_that_cannot_be_analysed_get_an_analysis_error(
    corpus: Corpus, relative: str, error: str
) -> None:
    """Too short for a head's patches: an error of each (file, head), not of the file."""
    errors = _head_errors(corpus, relative)
    for key in GOOD_KEYS:
        assert error in errors.get(key, ""), errors
    assert not _tags(corpus, relative)


@pytest.mark.parametrize("relative", ["bad/silence.wav", "bad/album.mp3/inside.ogg", "bad/new\nline.mp3",
                                      f"bad/{LONG_NAME}"])  # fmt: skip
def test_odd_but_valid_files_are_analysed(corpus: Corpus, relative: str) -> None:
    doc = corpus.doc(relative)
    assert doc["scan_error"] is None, doc
    values = [t["value"] for t in _tags(corpus, relative) if t["head_name"] == "mood_happy"]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), doc


def test_a_folder_named_like_a_track_is_a_folder(corpus: Corpus) -> None:
    assert "bad/album.mp3" not in corpus.docs
    assert corpus.doc("bad/album.mp3/inside.ogg")["scan_error"] is None


def test_links_out_of_the_library_are_never_followed(corpus: Corpus) -> None:
    assert not [relative for relative in corpus.docs if relative.startswith(("bad/escape", ".."))]


def test_the_long_and_newline_names_are_tagged(corpus: Corpus) -> None:
    for relative in ("bad/new\nline.mp3", f"bad/{LONG_NAME}"):
        doc = corpus.doc(relative)
        assert doc.get("write_error") is None, doc
        assert read_nom_tags(corpus.folder.library / relative), relative


# ---- models ----------------------------------------------------------------------------------------


def test_a_model_with_unreadable_metadata_is_reported_and_not_run(corpus: Corpus) -> None:
    assert "warning: model" in corpus.stderr and "broken-discogs-effnet-1.json" in corpus.stderr
    assert "unreadable model metadata" in corpus.stderr


def test_broken_heads_say_which_head_and_why(corpus: Corpus) -> None:
    # Checked before the run (ml.validation): named, never tried on a file.
    discovery = next(line for line in corpus.stdout.splitlines() if line.strip().startswith("head discovery"))
    assert "failed" in discovery and "2 broken model(s)" in discovery, discovery
    assert f"({GARBAGE_HEAD}): cannot run: cannot load" in discovery, discovery
    assert f"({MISMATCHED_HEAD}): cannot run: its graph gives 2 values per patch" in discovery, discovery
    assert not [doc for doc in corpus.docs.values()
                if {GARBAGE_HEAD, MISMATCHED_HEAD} & set(_head_errors(corpus, doc))]  # fmt: skip
    # What only running shows: stopped after its first files fail alike.
    predictions = next(line for line in corpus.stdout.splitlines() if line.strip().startswith("predictions"))
    assert "failed" in predictions and "1 broken model(s)" in predictions, predictions
    assert f"({NAN_HEAD}): it outputs NaN" in predictions, predictions


def test_broken_heads_store_nothing_and_good_heads_store_everything(corpus: Corpus) -> None:
    with corpus.folder.store() as store:
        predictions = store.file_tags_for_files([doc["_key"] for doc in corpus.docs.values()])

        def files_with(key: str) -> int:
            return len({t["file_id"] for t in predictions if f"{t['model_key']}:{t['head_name']}" == key})

        for key in (GARBAGE_HEAD, MISMATCHED_HEAD, NAN_HEAD):
            assert files_with(key) == 0, key
        analysable = [
            d for d in corpus.docs.values()
            if d["scan_error"] is None
            and "audio too short" not in _head_errors(corpus, d).get(GOOD_KEYS[0], "")
        ]  # fmt: skip
        for key in GOOD_KEYS:
            assert files_with(key) == len(analysable), key


def test_a_broken_head_never_blocks_files_for_other_heads(corpus: Corpus) -> None:
    for relative in ("good/track0.flac", "good/track1.mp3"):
        assert corpus.doc(relative)["analysis_error"] is None  # errors belong to (file, head)
        assert set(_head_errors(corpus, relative)) <= {GARBAGE_HEAD, MISMATCHED_HEAD, NAN_HEAD}


# ---- a file deleted between scan and analysis -------------------------------------------------------


def test_a_file_deleted_between_scan_and_analysis(corpus: Corpus) -> None:
    folder = corpus.folder
    vanishing = make_audio(folder.library / "vanishing.flac", 4.0, seed=12)
    scan = folder.run("scan")
    assert scan.returncode == 0, scan.stderr
    vanishing.unlink()
    first, last = GOOD_KEYS[1], GOOD_KEYS[0]  # partitions in the order `run` added them
    predictions = subprocess.run(
        [sys.executable, "-m", "nomarr_pipeline_tests.defs.assets.predictions_run", first, last],
        env={**folder.env, "PYTHONPATH": str(REPO_ROOT)}, cwd=folder.root,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert json.loads(predictions.stdout.splitlines()[-1])["success"], predictions.stderr[-3000:]
    with folder.store() as store:
        doc = next(d for d in library_files(store) if d["path"].endswith("vanishing.flac"))
    assert doc["analysis_error"] and "cannot decode audio" in doc["analysis_error"], doc
    assert "No such file" in doc["analysis_error"] or "not found" in doc["analysis_error"], doc


# ---- malformed calibration packages -----------------------------------------------------------------


def _package(entries: list[object] | None = None, **fields: object) -> dict[str, object]:
    entry = {
        "key": "effnet-discogs-effnet-1:mood_happy:happy", "model": "effnet-discogs-effnet-1",
        "head": "mood_happy", "label": "happy", "version": 1, "p5": 0.1, "p95": 0.9, "n": 100,
        "underflow_count": 0, "overflow_count": 0,
        "histogram": {"lo": 0.0, "hi": 1.0, "bins": 10000, "bin_width": 0.0001},
    }  # fmt: skip
    return {"version": "1.0", "method": "histogram", "calibrations": entries or [entry], **fields}


def _entry(**changes: object) -> dict[str, object]:
    return {**_package()["calibrations"][0], **changes}  # type: ignore[index]


PACKAGES: dict[str, tuple[str | bytes, str]] = {
    "bad JSON": ('{"version": "1.0", "calibrations": [', "not valid JSON"),
    "not an object": ("[1, 2, 3]", "must be a JSON object"),
    "wrong version": (json.dumps(_package(version="9")), "version must be '1.0'"),
    "no calibrations list": (json.dumps({"version": "1.0", "method": "histogram"}), "'calibrations' list"),
    "entry lacks fields": (json.dumps(_package([{"key": "x"}])), "lacks field(s)"),
    "p5 is NaN": (json.dumps(_package([_entry(p5=float("nan"))])), "NaN, which is not valid JSON"),
    "p95 is Infinity": (
        json.dumps(_package([_entry(p95=float("inf"))])),
        "Infinity, which is not valid JSON",
    ),
    "p5 above p95": (json.dumps(_package([_entry(p5=0.9, p95=0.1)])), "p5 0.9 is greater than p95 0.1"),
    "p5 a string": (json.dumps(_package([_entry(p5="0.1")])), "p5 must be a finite number"),
    "unknown head": (
        json.dumps(_package([_entry(key="x-y-1:nosuch:a", model="x-y-1", head="nosuch", label="a")])),
        "calibrates none of the heads in NOMARR_MODELS_DIR",
    ),
    "not text": (np.random.default_rng(3).bytes(1000), "cannot read calibration package"),
}


@pytest.fixture
def import_env(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> PipelineFolder:
    for name in ("NOMARR_DATA_DIR", "NOMARR_LIBRARY_ROOTS", "NOMARR_MODELS_DIR", "DAGSTER_HOME"):
        monkeypatch.setenv(name, corpus.folder.env[name])
    return corpus.folder


def _calibrations(folder: PipelineFolder) -> list[Doc]:
    with folder.store() as store:
        return sorted(store.list_calibrations(), key=lambda state: state["_key"])


def _import(folder: PipelineFolder, package: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    before = _calibrations(folder)
    assert cli.main(["import-calibrations", "--overwrite", str(package)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert _calibrations(folder) == before  # nothing imported, nothing changed
    return err


@pytest.mark.parametrize("kind", list(PACKAGES))
def test_a_malformed_calibration_package_is_refused_with_one_error_line(
    import_env: PipelineFolder, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, expected = PACKAGES[kind]
    package = tmp_path / "calibrations.json"
    package.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = _import(import_env, package, capsys)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err
    assert err[-1].startswith("next: "), err


def test_a_50_mb_calibration_package_is_refused_with_one_error_line(
    import_env: PipelineFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid beginning, then 50 MB of entries that are not calibrations."""
    package = tmp_path / "calibrations.json"
    junk = json.dumps({"key": "x" * 1000})
    count = 50_000_000 // (len(junk) + 1)
    head = json.dumps(_package([_entry()]))[:-2]  # without the closing "]}"
    package.write_text(head + "," + ",".join([junk] * count) + "]}")
    assert package.stat().st_size > 50_000_000
    err = _import(import_env, package, capsys)
    assert err[0].startswith("error: calibrations[1]") and "lacks field(s)" in err[0], err[:2]
    assert len(err) == 2, err[:3]
