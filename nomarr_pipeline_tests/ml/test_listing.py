"""``models list``: what a folder holds and what to do about each problem."""

from __future__ import annotations

import json
from pathlib import Path

from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.ml.listing import models_listing


def test_listing_of_a_folder_with_problems(tmp_path: Path) -> None:
    write_demo_models(tmp_path)
    (tmp_path / "mood_happy-discogs-effnet-1.json").write_text("{not json")
    (tmp_path / "mood_sad-msd-musicnn-1.pb").unlink()
    dance = tmp_path / "danceability-discogs-effnet-1.json"
    metadata = json.loads(dance.read_text())
    metadata["schema"]["inputs"][0]["shape"] = ["batch_size", 200]
    dance.write_text(json.dumps(metadata))

    lines = models_listing(discover_models(tmp_path), tmp_path, mood_head=TierConfig().head_is_mood)
    text = "\n".join(lines)
    assert lines[0] == f"models folder {tmp_path}: 2 backbones, 6 heads, 3 problems"
    assert ("  discogs-effnet-bs64-1  [effnet, auto-tagging (400 tags), tensorflow]  "
            "discogs-effnet-bs64-1.pb") in lines
    assert ("  musicnn-msd-musicnn-1:msd-musicnn  (50 labels, tensorflow, the tags of msd-musicnn-1, "
            "not in mood tiers)") in lines
    assert "  effnet-discogs-effnet-1:mood_aggressive  (2 labels, tensorflow, in mood tiers)" in lines
    assert "      aggressive, not_aggressive" in lines
    assert "Demo---Style 007, … (+392 more)" in text
    problems = lines[lines.index("problems:") + 1:]
    assert problems == [
        "  danceability-discogs-effnet-1.json: head input width 200 does not match backbone "
        "'discogs-effnet-bs64-1' embedding size 1280",
        "      next: this head was trained on another backbone's embeddings: fetch the variant of "
        "the head made for discogs-effnet-bs64-1, or correct its 'inference.embedding_model'",
        "  mood_happy-discogs-effnet-1.json: unreadable model metadata: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)",
        "      next: replace it with Essentia's original: delete mood_happy-discogs-effnet-1.pb and "
        "mood_happy-discogs-effnet-1.json, then `nomarr-pipeline models fetch mood_happy-discogs-effnet-1`",
        "  mood_sad-msd-musicnn-1.json: model file mood_sad-msd-musicnn-1.pb (or .onnx) is missing",
        "      next: `nomarr-pipeline models fetch mood_sad-msd-musicnn-1`, or delete "
        "mood_sad-msd-musicnn-1.json",
    ]


def test_every_label_on_request_and_an_empty_folder(tmp_path: Path) -> None:
    write_demo_models(tmp_path / "models")
    lines = models_listing(discover_models(tmp_path / "models"), tmp_path / "models", labels_shown=None)
    assert any(line.endswith("Demo---Style 398, Demo---Style 399") for line in lines)
    empty = models_listing(discover_models(tmp_path / "none"), tmp_path / "none")
    assert empty[-2:] == [
        f"  {tmp_path / 'none'}: models directory does not exist",
        "      next: set NOMARR_MODELS_DIR to your models folder, or create it and run "
        "`nomarr-pipeline models fetch --recommended`",
    ]
