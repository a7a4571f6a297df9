"""Model discovery: flat and nested folders, names and keys, and every broken-model case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import (
    HeadKind,
    autotagging_head_name,
    discover_models,
    partition_key_problem,
)
from nomarr_pipeline_tests.ml.broken_models import (
    write_garbage_head,
    write_other_backbones_head,
    write_width_mismatch_head,
)

HAPPY = "mood_happy-discogs-effnet-1"
REPLACE = ("replace or remove the model (`nomarr-pipeline models fetch {}`); it is checked again once its "
           "files change")


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _problem_for(models: Path, name: str) -> str:
    catalog = discover_models(models)
    messages = [p.message for p in catalog.problems if p.path.stem == name]
    assert messages, f"no problem for {name}: {catalog.problems}"
    return messages[0]


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    write_demo_models(tmp_path / "models")
    return tmp_path / "models"


def test_flat_folder_finds_every_head(flat: Path) -> None:
    catalog = discover_models(flat)
    assert not catalog.problems
    assert [b.name for b in catalog.backbones] == ["discogs-effnet-bs64-1", "msd-musicnn-1"]
    assert catalog.partition_keys == [
        "effnet-discogs-effnet-1:approachability_regression",
        "effnet-discogs-effnet-1:danceability",
        "effnet-discogs-effnet-1:genre_discogs400",
        "effnet-discogs-effnet-1:mood_aggressive",
        "effnet-discogs-effnet-1:mood_happy",
        "effnet-discogs-effnet-1:mtg_jamendo_moodtheme",
        "effnet-discogs-effnet-bs64-1:discogs-effnet-bs64",
        "musicnn-msd-musicnn-1:mood_sad",
        "musicnn-msd-musicnn-1:msd-musicnn",
    ]


def test_head_fields(flat: Path) -> None:
    catalog = discover_models(flat)
    happy = catalog.head("effnet-discogs-effnet-1:mood_happy")
    assert happy is not None
    assert (happy.head_name, happy.embedding_tag, happy.model_key) == (
        "mood_happy", "discogs-effnet-1", "effnet-discogs-effnet-1")
    assert happy.labels == ("happy", "non_happy")
    assert happy.version == 1
    assert happy.kind is HeadKind.SOFTMAX
    assert (happy.input_node, happy.output_node) == ("model/Placeholder", "model/Softmax")
    assert happy.backbone.name == "discogs-effnet-bs64-1"
    assert happy.backbone.embedding_output == "PartitionedCall:1"
    assert len(happy.tagger_version) == 16
    kinds = {h.head_name: h.kind for h in catalog.heads}
    assert kinds["mtg_jamendo_moodtheme"] is HeadKind.SIGMOID
    assert kinds["approachability_regression"] is HeadKind.REGRESSION
    assert kinds["genre_discogs400"] is HeadKind.PARTITIONED
    genre = catalog.head("effnet-discogs-effnet-1:genre_discogs400")
    assert genre is not None
    assert (genre.input_node, genre.output_node) == (
        "serving_default_model_Placeholder", "PartitionedCall:0")
    sad = catalog.head("musicnn-msd-musicnn-1:mood_sad")
    assert sad is not None and sad.backbone.family == "musicnn"
    assert sad.labels == ("non_sad", "sad")  # the JSON's order, not alphabetical or by name


def test_nested_tree_gives_the_same_catalog(flat: Path, tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    for pb in flat.glob("*.pb"):
        kind = "embeddings" if pb.stem in ("discogs-effnet-bs64-1", "msd-musicnn-1") else "heads"
        backbone = "musicnn" if "musicnn" in pb.stem else "effnet"
        dest = nested / backbone / kind
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(pb, dest / pb.name)
        shutil.copy(pb.with_suffix(".json"), dest / f"{pb.stem}.json")
    flat_catalog, nested_catalog = discover_models(flat), discover_models(nested)
    assert not nested_catalog.problems
    assert nested_catalog.partition_keys == flat_catalog.partition_keys
    assert [h.tagger_version for h in nested_catalog.heads] == [
        h.tagger_version for h in flat_catalog.heads]


def test_labels_and_version_come_from_the_json(flat: Path) -> None:
    _edit_json(flat / f"{HAPPY}.json", classes=["non_happy", "happy"], version="3")
    happy = discover_models(flat).head("effnet-discogs-effnet-1:mood_happy")
    assert happy is not None
    assert happy.labels == ("non_happy", "happy")
    assert happy.version == 3


def test_missing_version_defaults_to_one(flat: Path) -> None:
    data = json.loads((flat / f"{HAPPY}.json").read_text())
    del data["version"]
    (flat / f"{HAPPY}.json").write_text(json.dumps(data))
    happy = discover_models(flat).head("effnet-discogs-effnet-1:mood_happy")
    assert happy is not None and happy.version == 1


def test_changed_model_bytes_change_the_tagger_version(flat: Path) -> None:
    before = {h.partition_key: h.tagger_version for h in discover_models(flat).heads}
    _edit_json(flat / f"{HAPPY}.json", description="retrained")
    after = {h.partition_key: h.tagger_version for h in discover_models(flat).heads}
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"effnet-discogs-effnet-1:mood_happy"}
    # A changed backbone re-versions every head on it.
    with (flat / "discogs-effnet-bs64-1.pb").open("ab") as stream:
        stream.write(b"\x2a\x00")  # an empty debug_info field: a different file, still a graph
    again = {h.partition_key: h.tagger_version for h in discover_models(flat).heads}
    assert {k for k in after if after[k] != again[k]} == {
        k for k in after if k.startswith("effnet-")}


def test_compute_versions_false_skips_hashing(flat: Path) -> None:
    catalog = discover_models(flat, compute_versions=False)
    assert catalog.partition_keys == discover_models(flat).partition_keys
    assert all(h.tagger_version == "" for h in catalog.heads)


def test_missing_pb(flat: Path) -> None:
    (flat / f"{HAPPY}.pb").unlink()
    catalog = discover_models(flat)
    assert "effnet-discogs-effnet-1:mood_happy" not in catalog.partition_keys
    assert len(catalog.heads) == 8  # the others keep working
    assert _problem_for(flat, HAPPY) == f"model file {HAPPY}.pb (or .onnx) is missing"


def test_missing_json(flat: Path) -> None:
    (flat / f"{HAPPY}.json").unlink()
    assert _problem_for(flat, HAPPY) == f"metadata {HAPPY}.json is missing"
    assert len(discover_models(flat).heads) == 8


def test_malformed_json(flat: Path) -> None:
    (flat / f"{HAPPY}.json").write_text("{not json")
    assert _problem_for(flat, HAPPY).startswith("unreadable model metadata")
    assert len(discover_models(flat).heads) == 8


def test_json_that_is_not_an_object(flat: Path) -> None:
    (flat / f"{HAPPY}.json").write_text("[1, 2]")
    assert _problem_for(flat, HAPPY) == "model metadata is not a JSON object"


def test_unknown_backbone_algorithm(flat: Path) -> None:
    _edit_json(flat / "msd-musicnn-1.json",
               inference={"sample_rate": 16000, "algorithm": "TensorflowPredictFancy"})
    catalog = discover_models(flat)
    assert "unsupported backbone algorithm 'TensorflowPredictFancy'" in _problem_for(
        flat, "msd-musicnn-1")
    # its head has no backbone now; the effnet heads are untouched
    assert "musicnn-msd-musicnn-1:mood_sad" not in catalog.partition_keys
    assert "'msd-musicnn-1' was not found" in _problem_for(flat, "mood_sad-msd-musicnn-1")
    assert len(catalog.heads) == 7


def test_head_without_backbone(flat: Path) -> None:
    (flat / "discogs-effnet-bs64-1.pb").unlink()
    (flat / "discogs-effnet-bs64-1.json").unlink()
    catalog = discover_models(flat)
    assert catalog.partition_keys == ["musicnn-msd-musicnn-1:mood_sad",
                                      "musicnn-msd-musicnn-1:msd-musicnn"]
    message = _problem_for(flat, HAPPY)
    assert message == ("its backbone 'discogs-effnet-bs64-1' was not found in the models "
                       "directory (add the embedding model's .pb and .json)")


def test_head_backbone_found_by_link(flat: Path) -> None:
    data = json.loads((flat / f"{HAPPY}.json").read_text())
    data["inference"]["embedding_model"] = {
        "algorithm": "TensorflowPredictEffnetDiscogs",
        "link": "https://example.org/models/discogs-effnet-bs64-1.pb"}
    (flat / f"{HAPPY}.json").write_text(json.dumps(data))
    assert discover_models(flat).head("effnet-discogs-effnet-1:mood_happy") is not None


def test_head_input_width_must_match_the_backbone(flat: Path) -> None:
    data = json.loads((flat / f"{HAPPY}.json").read_text())
    data["schema"]["inputs"][0]["shape"] = ["batch_size", 200]
    (flat / f"{HAPPY}.json").write_text(json.dumps(data))
    assert _problem_for(flat, HAPPY) == (
        "head input width 200 does not match backbone 'discogs-effnet-bs64-1' "
        "embedding size 1280")


def test_head_without_classes(flat: Path) -> None:
    _edit_json(flat / f"{HAPPY}.json", classes=[])
    assert _problem_for(flat, HAPPY) == "'classes' must be a non-empty list of label strings"


def test_head_with_too_many_classes_for_its_output(flat: Path) -> None:
    _edit_json(flat / f"{HAPPY}.json", classes=["happy", "non_happy", "other"])
    assert _problem_for(flat, HAPPY) == (
        "prediction output width 2 does not match 3 classes")


def test_head_without_prediction_output(flat: Path) -> None:
    data = json.loads((flat / f"{HAPPY}.json").read_text())
    data["schema"]["outputs"] = [{"name": "a"}, {"name": "b"}]
    (flat / f"{HAPPY}.json").write_text(json.dumps(data))
    assert "no output with output_purpose 'predictions'" in _problem_for(flat, HAPPY)


def test_bad_version(flat: Path) -> None:
    _edit_json(flat / f"{HAPPY}.json", version="one")
    assert _problem_for(flat, HAPPY) == "'version' 'one' is not an integer"


def test_head_file_name_without_embedding_tag(flat: Path) -> None:
    for suffix in (".pb", ".json"):
        (flat / f"{HAPPY}{suffix}").rename(flat / f"happyhead{suffix}")
    assert "is not '<head_name>-<embedding tag>'" in _problem_for(flat, "happyhead")


def test_forbidden_characters_in_partition_key(flat: Path) -> None:
    for suffix in (".pb", ".json"):
        (flat / f"{HAPPY}{suffix}").rename(flat / f"mood happy,x-discogs-effnet-1{suffix}")
    message = _problem_for(flat, "mood happy,x-discogs-effnet-1")
    assert "forbidden characters" in message
    assert len(discover_models(flat).heads) == 8


@pytest.mark.parametrize("key", ["a/b:c", "a:b,c", "a|b", "a[0]", "a b", " a", ""])
def test_partition_key_problem(key: str) -> None:
    assert partition_key_problem(key) is not None


def test_valid_partition_key() -> None:
    assert partition_key_problem("effnet-discogs-effnet-1:mood_happy") is None


def test_duplicate_head_in_two_folders(flat: Path) -> None:
    copy = flat / "copies"
    copy.mkdir()
    shutil.copy(flat / f"{HAPPY}.pb", copy / f"{HAPPY}.pb")
    shutil.copy(flat / f"{HAPPY}.json", copy / f"{HAPPY}.json")
    catalog = discover_models(flat)
    assert len(catalog.heads) == 9
    assert any("duplicate of" in p.message for p in catalog.problems)


def test_missing_directory(tmp_path: Path) -> None:
    catalog = discover_models(tmp_path / "nope")
    assert not catalog.heads
    assert catalog.problems[0].message == "models directory does not exist"


def test_select(flat: Path) -> None:
    catalog = discover_models(flat)
    heads, missing = catalog.select(["effnet-discogs-effnet-1:mood_happy", "gone:head"])
    assert [h.head_name for h in heads] == ["mood_happy"]
    assert missing == ["gone:head"]


# ---- auto-tagging models: a backbone that is also a head -------------------------------
MSD = "msd-musicnn-1"
MSD_KEY = "musicnn-msd-musicnn-1:msd-musicnn"


def test_auto_tagging_backbones_are_heads_of_their_own(flat: Path) -> None:
    catalog = discover_models(flat)
    msd = catalog.head(MSD_KEY)
    styles = catalog.head("effnet-discogs-effnet-bs64-1:discogs-effnet-bs64")
    assert msd is not None and styles is not None
    assert msd.autotagging and styles.autotagging
    assert (msd.head_name, msd.model_key, msd.embedding_tag) == ("msd-musicnn", "musicnn-msd-musicnn-1", MSD)
    assert msd.labels == tuple(json.loads((flat / f"{MSD}.json").read_text())["classes"])
    assert len(styles.labels) == 400
    assert (msd.output_node, styles.output_node) == ("model/Sigmoid", "PartitionedCall:0")
    assert (msd.kind, styles.kind) == (HeadKind.SIGMOID, HeadKind.PARTITIONED)
    assert msd.graph_path == msd.backbone.graph_path
    # The backbone's pass fetches its predictions, for its own head and its other heads alike.
    (backbone,) = [b for b in catalog.backbones if b.name == MSD]
    assert backbone.predictions_output == "model/Sigmoid"
    sad = catalog.head("musicnn-msd-musicnn-1:mood_sad")
    assert sad is not None and sad.backbone == backbone == msd.backbone
    assert msd.tagger_version and msd.tagger_version != sad.tagger_version


def test_a_feature_extractor_without_classes_is_only_a_backbone(flat: Path) -> None:
    _edit_json(flat / f"{MSD}.json", classes=[])  # like discogs_release_embeddings-effnet-bs64-1
    catalog = discover_models(flat)
    assert MSD_KEY not in catalog.partition_keys and not catalog.problems
    (backbone,) = [b for b in catalog.backbones if b.name == MSD]
    assert backbone.predictions_output is None


def test_own_head_width_mismatch_keeps_the_backbone(flat: Path) -> None:
    _edit_json(flat / f"{MSD}.json", classes=["rock", "pop"])
    catalog = discover_models(flat)
    assert _problem_for(flat, MSD) == (
        "prediction output width 50 does not match 2 classes; it still serves as a backbone")
    assert MSD_KEY not in catalog.partition_keys
    assert "musicnn-msd-musicnn-1:mood_sad" in catalog.partition_keys
    (backbone,) = [b for b in catalog.backbones if b.name == MSD]
    assert backbone.predictions_output is None  # nothing asks for the unusable output


def test_own_head_duplicate_labels(flat: Path) -> None:
    data = json.loads((flat / f"{MSD}.json").read_text())
    data["classes"][1] = data["classes"][0]
    (flat / f"{MSD}.json").write_text(json.dumps(data))
    assert _problem_for(flat, MSD) == "'classes' has duplicate labels; it still serves as a backbone"


def test_own_head_needs_a_one_pass_family(flat: Path) -> None:
    _edit_json(flat / f"{MSD}.json",
               inference={"sample_rate": 16000, "algorithm": "TensorflowPredictVGGish"})
    assert _problem_for(flat, MSD) == (
        "its own predictions (50 classes) are not offered as a head: auto-tagging is supported "
        "on effnet and musicnn backbones; it still serves as a backbone")


def test_own_head_name_needs_a_hyphen(flat: Path) -> None:
    for suffix in (".pb", ".json"):
        (flat / f"{MSD}{suffix}").rename(flat / f"tagger{suffix}")
    catalog = discover_models(flat)
    assert "is not '<name>-<version>'" in _problem_for(flat, "tagger")
    assert "tagger" in [b.name for b in catalog.backbones]


@pytest.mark.parametrize(("backbone", "head_name"), [
    ("msd-musicnn-1", "msd-musicnn"),
    ("mtt-musicnn-1", "mtt-musicnn"),
    ("discogs-effnet-bs64-1", "discogs-effnet-bs64"),
    ("tagger-2", "tagger-2"),
    ("tagger", None),
])
def test_autotagging_head_name(backbone: str, head_name: str | None) -> None:
    assert autotagging_head_name(backbone) == head_name


def test_heads_that_cannot_run_are_problems_with_their_reason(flat: Path) -> None:
    write_garbage_head(flat)
    write_width_mismatch_head(flat)
    write_other_backbones_head(flat)
    catalog = discover_models(flat)
    problems = {p.head_key: (p.message, p.fix) for p in catalog.problems}
    assert problems == {
        "effnet-discogs-effnet-1:mood_sad": (
            "cannot run: cannot load mood_sad-discogs-effnet-1.pb: not a TensorFlow graph: "
            "invalid protobuf field at byte 1", REPLACE.format("mood_sad-discogs-effnet-1")),
        "effnet-discogs-effnet-1:mood_party": (
            "cannot run: its graph gives 2 values per patch, but its JSON lists 3 labels",
            REPLACE.format("mood_party-discogs-effnet-1")),
        "effnet-discogs-effnet-1:mood_relaxed": (
            "cannot run: its graph takes 200-wide embeddings, but its backbone discogs-effnet-bs64-1 "
            "gives 1280: it is a head of another backbone", REPLACE.format("mood_relaxed-discogs-effnet-1")),
    }
    assert not set(problems) & set(catalog.partition_keys)
    assert "effnet-discogs-effnet-1:mood_happy" in catalog.partition_keys


def test_a_graph_without_the_nodes_its_json_names_cannot_run(flat: Path) -> None:
    data = json.loads((flat / f"{HAPPY}.json").read_text())
    data["schema"]["outputs"][0]["name"] = "model/Nowhere"
    (flat / f"{HAPPY}.json").write_text(json.dumps(data))
    assert _problem_for(flat, HAPPY) == (
        "cannot run: its graph has no output node 'model/Nowhere', which its JSON names")


def test_a_backbone_that_cannot_run_takes_its_heads_along(flat: Path) -> None:
    (flat / "msd-musicnn-1.pb").write_bytes((flat / "msd-musicnn-1.pb").read_bytes()[:-40])
    catalog = discover_models(flat)
    assert not [key for key in catalog.partition_keys if key.startswith("musicnn-")]
    (message,) = {p.message for p in catalog.problems if (p.head_key or "").startswith("musicnn-")}
    assert message.startswith(
        "cannot run: its backbone msd-musicnn-1 cannot run: cannot load msd-musicnn-1.pb: ")
    # Repaired: found again (the check is cached by the file's identity, never stale).
    write_demo_models(flat)
    assert "musicnn-msd-musicnn-1:mood_sad" in discover_models(flat).partition_keys
