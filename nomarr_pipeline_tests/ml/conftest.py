"""Shared ml fixtures: the generated demo models and a few generated audio files.

Session-scoped and treated as read-only by tests, so they are built once per run.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nomarr_pipeline.ml.backbone_pass import BackboneOutputs
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import Backbone, ModelCatalog, discover_models
from nomarr_pipeline.ml.inference import ModelSession
from nomarr_pipeline_tests.ml.audio_fixtures import AUDIO_FORMATS, make_audio

FIXTURE_SECONDS = 6.0
# The trained MSD-MusiCNN weights live outside the repository (never copied into it):
# `../shared/models` beside the checkout (or beside the main checkout of a git worktree), or
# wherever this variable points.
REAL_MODELS_ENV = "NOMARR_TEST_REAL_MODELS_DIR"
REPO = Path(__file__).resolve().parents[2]


def _main_checkout(repo: Path) -> Path:
    git = repo / ".git"
    if git.is_file():  # a worktree's ".git" says "gitdir: <main checkout>/.git/worktrees/<name>"
        return Path(git.read_text().split(":", 1)[1].strip()).parents[2]
    return repo


REAL_MODELS_DEFAULT = next(
    (folder for checkout in (REPO, _main_checkout(REPO))
     if (folder := checkout.parent / "shared" / "models").is_dir()),
    REPO.parent / "shared" / "models",
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("models")
    write_demo_models(dest)
    return dest


@pytest.fixture(scope="session")
def catalog(models_dir: Path) -> ModelCatalog:
    found = discover_models(models_dir)
    assert not found.problems, found.problems
    return found


@pytest.fixture(scope="session")
def audio_by_format(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per supported format, each with different content (seed = index)."""
    folder = tmp_path_factory.mktemp("audio")
    return {
        suffix: make_audio(folder / f"fixture{index}{suffix}", FIXTURE_SECONDS, seed=index)
        for index, suffix in enumerate(AUDIO_FORMATS)
    }


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The folder holding the real ``msd-musicnn-1.pb``/``.json``; skips the test without it."""
    folder = Path(os.environ.get(REAL_MODELS_ENV) or REAL_MODELS_DEFAULT)
    if not (folder / "msd-musicnn-1.pb").is_file() or not (folder / "msd-musicnn-1.json").is_file():
        pytest.skip(f"real MSD-MusiCNN weights not found in {folder} (set {REAL_MODELS_ENV} "
                    "to the folder holding msd-musicnn-1.pb and msd-musicnn-1.json)")
    return folder


@pytest.fixture(scope="session")
def real_models_both(real_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MSD-MusiCNN as ``.pb`` and ``.onnx`` beside one ``.json`` (links, no copies);
    skips the test without ``onnx/msd-musicnn-1.onnx``."""
    onnx_file = real_models_dir / "onnx" / "msd-musicnn-1.onnx"
    if not onnx_file.is_file():
        pytest.skip(f"{onnx_file} not found (the real network converted to ONNX)")
    folder = tmp_path_factory.mktemp("real-both")
    for source in (real_models_dir / "msd-musicnn-1.pb", real_models_dir / "msd-musicnn-1.json", onnx_file):
        (folder / source.name).symlink_to(source)
    return folder


@pytest.fixture
def counted_session(monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSession, Counter[str]]:
    """A model session and how many backbone passes it made, by backbone name."""
    session, passes = ModelSession(), Counter[str]()
    run_backbone = session.run_backbone

    def counting(backbone: Backbone, audio: np.ndarray) -> BackboneOutputs:
        passes[backbone.name] += 1
        return run_backbone(backbone, audio)

    monkeypatch.setattr(session, "run_backbone", counting)
    return session, passes
