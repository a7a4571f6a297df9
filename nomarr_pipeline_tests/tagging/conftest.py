"""Real audio fixtures for the tag-writing tests: a few seconds of sine per format, made with
ffmpeg once per session and pre-tagged with foreign (non-``nom:``) tags through mutagen."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline_tests.tagging.audio_helpers import FORMATS, add_foreign_tags, encode


@pytest.fixture(scope="session")
def audio_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio-sources")
    sources: dict[str, Path] = {}
    for extension, encoder in FORMATS.items():
        target = folder / f"source.{extension}"
        encode(target, encoder)
        add_foreign_tags(target)
        sources[extension] = target
    return sources


@pytest.fixture
def library_root(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    root.mkdir()
    return root


@pytest.fixture
def make_file(audio_sources: dict[str, Path], library_root: Path) -> Callable[..., Path]:
    """Copy a pre-tagged fixture into the library: ``make_file("flac", "Album/track.flac")``."""

    def make(extension: str, relative: str | None = None) -> Path:
        target = library_root / (relative or f"track.{extension}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(audio_sources[extension], target)
        return target

    return make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'nomarr.db'}")
    yield opened
    opened.close()
