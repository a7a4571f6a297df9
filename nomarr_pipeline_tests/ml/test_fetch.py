"""``fetch_models`` against a real local HTTP server: what arrives, and that a failure of any
kind (404, a short transfer, a web page, a full disk) leaves nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.ml import fetch
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.ml.fetch import (
    DEFAULT_MODELS_URL,
    RECOMMENDED,
    FetchError,
    fetch_models,
    model_path,
    models_url_from_env,
    remove_stale_temp_files,
)
from nomarr_pipeline_tests.ml.model_server import ModelSite, site_path

HAPPY = "mood_happy-discogs-effnet-1"
EFFNET = "discogs-effnet-bs64-1"


@pytest.fixture
def site(model_site: ModelSite) -> ModelSite:
    return model_site


@pytest.fixture
def source(site: ModelSite) -> Path:
    assert site.source is not None
    return site.source  # the generated models the site serves


def _everything_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_same_files(folder: Path, source: Path, names: list[str]) -> None:
    assert _everything_in(folder) == sorted(f"{n}{s}" for n in names for s in (".json", ".pb"))
    for name in names:
        for suffix in (".json", ".pb"):
            assert (folder / f"{name}{suffix}").read_bytes() == (source / f"{name}{suffix}").read_bytes()


# ---- what arrives -----------------------------------------------------------------------------
def test_a_head_brings_its_backbone(site: ModelSite, source: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int | None]] = []
    report = fetch_models([HAPPY], tmp_path / "models", base_url=site.url,
                          progress=lambda *args: seen.append(args))
    assert report.fetched == [EFFNET, HAPPY]
    _assert_same_files(tmp_path / "models", source, [EFFNET, HAPPY])
    assert report.bytes_downloaded == sum(p.stat().st_size for p in (tmp_path / "models").iterdir())
    catalog = discover_models(tmp_path / "models")
    assert not catalog.problems
    assert catalog.partition_keys == ["effnet-discogs-effnet-1:mood_happy",
                                      "effnet-discogs-effnet-bs64-1:discogs-effnet-bs64"]
    graph_size = (source / f"{EFFNET}.pb").stat().st_size
    assert (f"{EFFNET}.pb", graph_size, graph_size) in seen  # progress reaches the total

    # A second fetch finds both there and downloads nothing.
    site.requests.clear()
    again = fetch_models([HAPPY, EFFNET], tmp_path / "models", base_url=site.url)
    assert (again.fetched, again.present, site.requests) == ([], [HAPPY, EFFNET], [])


def test_the_recommended_set_is_the_mood_tier_heads_and_their_backbone(
    site: ModelSite, tmp_path: Path
) -> None:
    report = fetch_models(RECOMMENDED, tmp_path, base_url=site.url)
    assert report.fetched == [EFFNET, *RECOMMENDED]
    catalog = discover_models(tmp_path)
    assert not catalog.problems
    mood_heads = {h.head_name for h in catalog.heads if TierConfig().head_is_mood(h.head_name)}
    assert mood_heads == {name.split("-", 1)[0] for name in RECOMMENDED}
    assert len(mood_heads) == len(RECOMMENDED) == 8


def test_a_model_anywhere_in_the_folder_counts_as_present(site: ModelSite, source: Path,
                                                          tmp_path: Path) -> None:
    nested = tmp_path / "effnet" / "embeddings"
    nested.mkdir(parents=True)
    for suffix in (".pb", ".json"):
        (nested / f"{EFFNET}{suffix}").write_bytes((source / f"{EFFNET}{suffix}").read_bytes())
    report = fetch_models([HAPPY], tmp_path, base_url=site.url)
    assert (report.fetched, report.present) == ([HAPPY], [EFFNET])
    assert not discover_models(tmp_path).problems


def test_a_mirror_folder_by_file_url(source: Path, tmp_path: Path) -> None:
    """Air-gapped sites: a copy of the site's layout on disk, NOMARR_MODELS_URL=file://…"""
    mirror = tmp_path / "mirror"
    for name in (HAPPY, EFFNET):
        for suffix in (".pb", ".json"):
            target = mirror / (model_path(name) + suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((source / f"{name}{suffix}").read_bytes())
    report = fetch_models([HAPPY], tmp_path / "models", base_url=mirror.as_uri())
    assert report.fetched == [EFFNET, HAPPY]
    _assert_same_files(tmp_path / "models", source, [EFFNET, HAPPY])
    with pytest.raises(FetchError, match="no such file"):
        fetch_models(["mood_sad-discogs-effnet-1"], tmp_path / "models", base_url=mirror.as_uri())


@pytest.mark.parametrize(("name", "path"), [
    (HAPPY, "classification-heads/mood_happy/mood_happy-discogs-effnet-1"),
    ("approachability_regression-discogs-effnet-1",
     "classification-heads/approachability/approachability_regression-discogs-effnet-1"),
    ("engagement_3c-discogs-effnet-1", "classification-heads/engagement/engagement_3c-discogs-effnet-1"),
    (EFFNET, "feature-extractors/discogs-effnet/discogs-effnet-bs64-1"),
    ("msd-musicnn-1", "autotagging/msd/msd-musicnn-1"),
    ("mtt-musicnn-1.pb", "autotagging/mtt/mtt-musicnn-1"),
    ("/some/where/custom-model-2.json", "some/where/custom-model-2"),
])
def test_model_path(name: str, path: str) -> None:
    assert model_path(name) == path


@pytest.mark.parametrize("name", ["", "../secrets", "a/../../b", "mood happy-x", ".hidden-1", "single"])
def test_model_path_refuses(name: str) -> None:
    with pytest.raises(FetchError):
        model_path(name)


def test_models_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert models_url_from_env() == DEFAULT_MODELS_URL == "https://essentia.upf.edu/models/"
    monkeypatch.setenv("NOMARR_MODELS_URL", "https://mirror.example/essentia/")
    assert models_url_from_env() == "https://mirror.example/essentia/"


# ---- transfers that break off are resumed ----------------------------------------------------
def test_a_truncated_transfer_resumes_where_it_stopped(site: ModelSite, source: Path,
                                                       tmp_path: Path) -> None:
    graph = site_path(EFFNET, ".pb")
    size = len(site.files[graph])
    site.fail(graph, "truncate")
    report = fetch_models([EFFNET], tmp_path, base_url=site.url)
    assert report.fetched == [EFFNET]
    assert site.requested(f"{EFFNET}.pb") == [None, f"bytes={size // 2}-"]
    _assert_same_files(tmp_path, source, [EFFNET])


def test_a_server_that_ignores_range_restarts_the_file(site: ModelSite, source: Path,
                                                      tmp_path: Path) -> None:
    graph = site_path(EFFNET, ".pb")
    site.fail(graph, "truncate", "ignore-range")
    assert fetch_models([EFFNET], tmp_path, base_url=site.url).fetched == [EFFNET]
    _assert_same_files(tmp_path, source, [EFFNET])


def test_a_server_error_is_retried(site: ModelSite, source: Path, tmp_path: Path) -> None:
    site.fail(site_path(HAPPY, ".json"), "503")
    assert fetch_models([HAPPY], tmp_path, base_url=site.url).fetched == [EFFNET, HAPPY]
    _assert_same_files(tmp_path, source, [EFFNET, HAPPY])


# ---- failures leave nothing -----------------------------------------------------------------
@pytest.mark.parametrize(("path", "faults", "message"), [
    (site_path(HAPPY, ".pb"), ["404"], "HTTP 404"),
    (site_path(HAPPY, ".json"), ["404"], "HTTP 404"),
    (site_path(HAPPY, ".pb"), ["truncate"] * 4, "transfer .* 4 attempts"),
    (site_path(HAPPY, ".pb"), ["truncate-open"], "unusable: TensorFlow graph is (truncated|incomplete)"),
    (site_path(HAPPY, ".pb"), ["html"], "returned a web page"),
    (site_path(HAPPY, ".json"), ["html"], "returned a web page"),
    (site_path(HAPPY, ".pb"), ["html-binary"], "unusable: not a TensorFlow graph"),
    (site_path(HAPPY, ".json"), ["html-binary"], "the .json is not JSON"),
    (site_path(HAPPY, ".pb"), ["503"] * 4, "HTTP 503 .* 4 attempts"),
])
def test_a_failed_head_leaves_nothing_of_itself(site: ModelSite, source: Path, tmp_path: Path,
                                                path: str, faults: list[str], message: str) -> None:
    site.fail(path, *faults)
    with pytest.raises(FetchError, match=message):
        fetch_models([HAPPY], tmp_path, base_url=site.url)
    # The backbone was complete before the head failed: it stays; of the head, nothing.
    expected = [] if path.endswith(".json") else [EFFNET]
    _assert_same_files(tmp_path, source, expected)


def test_a_head_whose_backbone_fails_is_not_kept(site: ModelSite, tmp_path: Path) -> None:
    site.fail(site_path(EFFNET, ".pb"), "404")
    with pytest.raises(FetchError, match=f"{EFFNET} \\(the backbone of {HAPPY}\\).*HTTP 404"):
        fetch_models([HAPPY], tmp_path, base_url=site.url)
    assert _everything_in(tmp_path) == []
    assert not discover_models(tmp_path).heads


def test_metadata_that_is_not_essentias(site: ModelSite, tmp_path: Path) -> None:
    site.files[site_path(HAPPY, ".json")] = b'{"name": "something else"}'
    with pytest.raises(FetchError, match="not Essentia model metadata"):
        fetch_models([HAPPY], tmp_path, base_url=site.url)
    assert _everything_in(tmp_path) == []


def test_a_full_disk_leaves_nothing(site: ModelSite, source: Path, tmp_path: Path) -> None:
    """A real write failure: the fetch runs in a child process whose file size limit
    (RLIMIT_FSIZE) is below the graph's size, so writing it fails with EFBIG part-way —
    what a full disk (ENOSPC) does to the same write."""
    limit = (source / f"{EFFNET}.json").stat().st_size + 4096
    assert (source / f"{EFFNET}.pb").stat().st_size > 2 * limit
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill us
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from nomarr_pipeline.ml.fetch import FetchError, fetch_models
        try:
            fetch_models([{EFFNET!r}], Path({str(tmp_path)!r}), base_url={site.url!r})
        except FetchError as exc:
            print(exc)
            sys.exit(3)
    """)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3, done.stderr
    assert "not enough disk space" in done.stdout
    assert _everything_in(tmp_path) == []


def test_stale_temp_files_of_a_killed_fetch_are_removed(tmp_path: Path) -> None:
    old = tmp_path / f".{HAPPY}.pb.nomarr-part-0a1b2c3d"
    fresh = tmp_path / f".{HAPPY}.json.nomarr-part-4e5f6a7b"
    for temp in (old, fresh):
        temp.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert remove_stale_temp_files(tmp_path) == 1
    assert _everything_in(tmp_path) == [fresh.name]  # may belong to a fetch still running


def test_only_the_command_line_fetches() -> None:
    """Nothing is downloaded unless asked: no module but the command line and fetch.py uses it."""
    package = Path(fetch.__file__).resolve().parents[1]
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   if "ml.fetch" in p.read_text(encoding="utf-8") or "import fetch" in p.read_text())
    assert set(users) <= {"cli/main.py", "ml/fetch.py"}


def test_fetching_a_present_head_brings_its_missing_backbone(site: ModelSite, source: Path,
                                                             tmp_path: Path) -> None:
    """What `models list` advises for a head without its backbone."""
    for suffix in (".pb", ".json"):
        (tmp_path / f"{HAPPY}{suffix}").write_bytes((source / f"{HAPPY}{suffix}").read_bytes())
    (problem,) = discover_models(tmp_path).problems
    assert problem.fix == f"`nomarr-pipeline models fetch {HAPPY}` (fetches its backbone)"
    report = fetch_models([HAPPY], tmp_path, base_url=site.url)
    assert (report.fetched, report.present) == ([EFFNET], [HAPPY])
    assert not discover_models(tmp_path).problems
