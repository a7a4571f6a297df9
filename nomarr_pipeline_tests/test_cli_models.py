"""``nomarr-pipeline models list`` and ``models fetch``: output, exit status, clear errors,
against a real local HTTP server serving generated models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nomarr_pipeline import cli
from nomarr_pipeline.ml import fetch
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.fetch import RECOMMENDED
from nomarr_pipeline_tests.ml.model_server import ModelSite, generated_models, publish, serve, site_path

HAPPY = "mood_happy-discogs-effnet-1"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelSite]:
    monkeypatch.setattr(fetch, "RETRY_PAUSE_S", 0.01)
    published = ModelSite()
    publish(published, generated_models(tmp_path / "published"))
    with serve(published) as running:
        monkeypatch.setenv("NOMARR_MODELS_URL", running.url)
        yield running


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["models", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_clear_error(err: str, *phrases: str) -> None:
    assert "Traceback" not in err, err
    err = err[err.index("error: "):]  # after any progress lines
    assert err.startswith("error: ") and "\nnext: " in err and err.count("\n") == 2, err
    for phrase in phrases:
        assert phrase in err, err


def test_list_shows_keys_labels_and_problems(tmp_path: Path, monkeypatch, capsys) -> None:
    write_demo_models(tmp_path / "models")
    (tmp_path / "models" / "mood_sad-msd-musicnn-1.pb").unlink()
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, out, _ = _run(capsys, "list")
    assert code == 0
    assert "2 backbones, 8 heads, 1 problems" in out.splitlines()[0]
    assert "  effnet-discogs-effnet-1:mood_happy  (2 labels, in mood tiers)" in out
    assert "      happy, non_happy" in out
    assert "  effnet-discogs-effnet-bs64-1:discogs-effnet-bs64  (400 labels, the tags of " in out
    assert "(+392 more)" in out
    assert "next: `nomarr-pipeline models fetch mood_sad-msd-musicnn-1`" in out

    code, out, _ = _run(capsys, "list", "--all-labels")
    assert code == 0 and "Demo---Style 399" in out


def test_list_without_a_models_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = _run(capsys, "list")
    assert code == 2
    _assert_clear_error(err, "no models folder configured", "NOMARR_MODELS_DIR")
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "nowhere"))
    code, _, err = _run(capsys, "list")
    assert code == 2
    _assert_clear_error(err, "does not exist", "models fetch --recommended")


def test_fetch_a_head_with_its_backbone(site: ModelSite, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, out, err = _run(capsys, "fetch", HAPPY)
    assert code == 0, err
    assert f"from {site.url} into {tmp_path / 'models'}" in out
    assert "fetched: discogs-effnet-bs64-1\nfetched: mood_happy-discogs-effnet-1\n" in out
    assert "2 heads in" in out
    # Not a terminal: plain progress lines on stderr, one summary per file.
    assert "discogs-effnet-bs64-1.pb: " in err and " kB in " in err
    assert ".json: " not in err  # a few kB: no progress shown
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "discogs-effnet-bs64-1.json", "discogs-effnet-bs64-1.pb", f"{HAPPY}.json", f"{HAPPY}.pb"]

    code, out, _ = _run(capsys, "fetch", "--recommended")
    assert code == 0
    assert out.count("fetched: ") == len(RECOMMENDED) - 1  # all but mood_happy; the backbone is here
    assert f"already there: {HAPPY}" in out


def test_fetch_failure_is_a_clear_error_and_leaves_nothing(site: ModelSite, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    site.fail(site_path("discogs-effnet-bs64-1", ".pb"), "html")
    code, _, err = _run(capsys, "fetch", HAPPY)
    assert code == 2
    _assert_clear_error(err, "returned a web page", "NOMARR_MODELS_URL")
    assert list((tmp_path / "models").iterdir()) == []

    code, _, err = _run(capsys, "fetch")
    assert code == 2
    _assert_clear_error(err, "no model named", "--recommended")
    code, _, err = _run(capsys, "fetch", "no-such-head-1")
    assert code == 2
    _assert_clear_error(err, "HTTP 404")
