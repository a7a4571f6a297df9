"""The tags players read, read back by the readers players use: TagLib (Navidrome, Kodi) and
ffprobe (many other tools). No mocks: real files made by ffmpeg, written by the real writer."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mutagen
import pytest
import taglib
from mutagen.id3 import TXXX, Encoding

from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.atomic import PreparedWrite, commit_write, prepare_write
from nomarr_pipeline.tagging.formats import OpenedAudio
from nomarr_pipeline.tagging.navidrome import export_navidrome_kit
from nomarr_pipeline.tagging.selection import DEFAULT_OPTIONS, GenreOptions, TagOptions, select_tags
from nomarr_pipeline_tests.calibration.tier_docs import compute_mood_tiers
from nomarr_pipeline_tests.tagging.audio_helpers import USER_MOOD, stat_of
from nomarr_pipeline_tests.tagging.library_helpers import library_doc, register, run
from nomarr_pipeline_tests.tagging.tag_helpers import score_key

MODEL = "effnet-discogs-effnet-1"
TIERS = {"mood-strict": ["happy"], "mood-regular": ["happy", "party"],
         "mood-loose": ["happy", "party", "calm"]}  # fmt: skip
# Each format the way players meet it; "mp3-v23" is an MP3 whose tag a v2.3 tagger wrote.
PLAYER_FORMATS = ["mp3", "mp3-v23", "m4a", "flac", "ogg", "opus", "wav"]


def player_file(make_file: Callable[..., Path], kind: str) -> Path:
    """A fixture file with the user's own MOOD, as its format's taggers store it."""
    if kind != "mp3-v23":
        return make_file(kind)
    path = make_file("mp3", "v23.mp3")
    audio = mutagen.File(path)
    audio.tags.delall("TMOO")  # v2.3 has no TMOO: its taggers write TXXX:MOOD
    audio.tags.add(TXXX(encoding=Encoding.UTF16, desc="MOOD", text=[USER_MOOD]))
    audio.save(v2_version=3)
    return path


def write(path: Path, tags: dict[str, Any], replace: tuple[str, ...] = ()) -> str:
    """Prepare and commit as a batch does; the outcome's status."""
    known = [stat_of(path)]
    prepared = prepare_write(path, tags, library_roots=[path.parent], known_stats=known,
                             replace_fields=replace)  # fmt: skip
    if isinstance(prepared, PreparedWrite):
        return commit_write(prepared).status
    return prepared.status


def selected(
    tiers: dict[str, list[str]], options: TagOptions = DEFAULT_OPTIONS, predictions: Any = ()
) -> Any:
    return select_tags(mode="minimal", has_calibration=True, write_raw_scores=False,
                       predictions=list(predictions), mood_tiers=tiers, options=options)  # fmt: skip


def taglib_tags(path: Path) -> dict[str, list[str]]:
    with taglib.File(str(path)) as opened:
        return dict(opened.tags)


def ffprobe_tags(path: Path) -> dict[str, str]:
    """What ffprobe shows of a file's tags (container and stream), keys in lower case."""
    output = subprocess.run(
        ["ffprobe", "-v", "quiet", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    probe = json.loads(output)
    tags = [probe["format"].get("tags", {}), *(stream.get("tags", {}) for stream in probe["streams"])]
    return {key.lower(): value for found in tags for key, value in found.items()}


if shutil.which("ffprobe") is None:  # pragma: no cover - the build machines have ffmpeg
    pytest.skip("ffprobe is needed", allow_module_level=True)


@pytest.mark.parametrize("kind", PLAYER_FORMATS)
def test_taglib_reads_every_term_of_the_tier_in_mood_and_the_users_own_value_stays(
    kind: str, make_file: Callable[..., Path]
) -> None:
    path = player_file(make_file, kind)
    id3_version = getattr(mutagen.File(path).tags, "version", None)

    assert write(path, selected(TIERS)) == "written"

    read = taglib_tags(path)
    assert read["MOOD"] == [USER_MOOD, "happy", "party"]  # the regular tier, every term
    assert read["NOM:MOOD-REGULAR"] == ["happy", "party"]
    assert read["NOM:WRITTEN-MOOD"] == ["happy", "party"]  # what the next write may replace
    assert getattr(mutagen.File(path).tags, "version", None) == id3_version  # v2.3 stays v2.3
    # ffprobe shows one value of a multi-valued field (Vorbis: all, joined by ";"); nothing of
    # TMOO, which it does not map, nor of a WAV's ID3 chunk.
    shown = {"mp3": None, "wav": None, "mp3-v23": USER_MOOD, "m4a": USER_MOOD}
    vorbis = f"{USER_MOOD};happy;party"
    assert ffprobe_tags(path).get("mood") == shown.get(kind, vorbis)
    assert write(path, selected(TIERS)) == "unchanged"


@pytest.mark.parametrize("kind", ["mp3-v23", "m4a", "flac", "wav"])
def test_pipeline_values_are_replaced_when_tiers_change_and_the_users_survive(
    kind: str, make_file: Callable[..., Path]
) -> None:
    path = player_file(make_file, kind)
    write(path, selected(TIERS))
    changed = {**TIERS, "mood-regular": ["sad", USER_MOOD]}

    assert write(path, selected(changed)) == "written"
    assert taglib_tags(path)["MOOD"] == [USER_MOOD, "sad"]

    assert write(path, selected(changed, TagOptions(mood_tier="mood-strict"))) == "written"
    assert taglib_tags(path)["MOOD"] == [USER_MOOD, "happy"]

    assert write(path, selected(TIERS), replace=(keys.MOOD,)) == "written"  # the user opted in
    assert taglib_tags(path)["MOOD"] == ["happy", "party"]

    assert write(path, selected(TIERS, TagOptions(mood_tier=None))) == "written"  # turned off
    assert "MOOD" not in taglib_tags(path)


@pytest.mark.parametrize("kind", ["mp3", "m4a", "ogg"])
def test_genre_is_written_only_where_the_user_has_none_unless_asked(
    kind: str, make_file: Callable[..., Path]
) -> None:
    strengths = (("Electronic---Techno", 0.97), ("Rock---Punk", 0.9), ("Jazz---Bop", 0.2))
    styles = [cal("discogs-effnet-bs64", label, calibrated) for label, calibrated in strengths]
    options = TagOptions(genre=GenreOptions(head="discogs-effnet-bs64", count=3, threshold=0.8))
    path = make_file(kind)
    write(path, selected(TIERS, options, styles))
    assert taglib_tags(path)["GENRE"] == ["Electronic - Techno", "Rock - Punk"]

    user = make_file(kind, f"user.{kind}")
    with taglib.File(str(user), save_on_exit=True) as opened:
        opened.tags["GENRE"] = ["Shoegaze"]
    write(user, selected(TIERS, options, styles))
    assert taglib_tags(user)["GENRE"] == ["Shoegaze"]
    write(user, selected(TIERS, options, styles), replace=(keys.GENRE,))
    assert taglib_tags(user)["GENRE"] == ["Electronic - Techno", "Rock - Punk"]


def test_none_mode_touches_nothing(store: Any, make_file: Callable[..., Path], library_root: Path) -> None:
    store.ensure_library(library_doc(library_root, mode="none"))
    files = {"a": make_file("mp3"), "b": make_file("flac")}
    register(store, files)
    content = {key: path.read_bytes() for key, path in files.items()}

    assert run(store, library_root).processed == 0

    assert {key: path.read_bytes() for key, path in files.items()} == content


def cal(head: str, label: str, calibrated: float) -> dict[str, Any]:
    return {"model_key": MODEL, "head_name": head, "label": label, "value": 0.5,
            "calibrated_value": calibrated}  # fmt: skip


@pytest.mark.parametrize(
    ("happy", "non_happy", "theme_happy", "expected"),
    [
        (0.1, 0.9, 0.95, ["happy", "party"]),  # the theme head is surer: happy
        (0.05, 0.97, 0.85, ["not happy", "party"]),  # mood_happy is surer: not happy
        (0.1, 0.9, 0.9, ["party"]),  # a tie: neither
    ],
)
def test_heads_that_disagree_leave_one_term_or_none_in_the_file(
    happy: float, non_happy: float, theme_happy: float, expected: list[str], make_file: Callable[..., Path]
) -> None:
    predictions = [cal("mood_happy", "happy", happy), cal("mood_happy", "non_happy", non_happy),
                   cal("mtg_jamendo_moodtheme", "happy", theme_happy),
                   cal("mtg_jamendo_moodtheme", "party", 0.93),
                   cal("mtg_jamendo_moodtheme", "calm", 0.1)]  # fmt: skip
    tiers = compute_mood_tiers(predictions)
    for terms in tiers.values():
        assert not {"happy", "not happy"} <= set(terms)
    assert set(tiers["mood-strict"]) <= set(tiers["mood-regular"]) <= set(tiers["mood-loose"])
    path = make_file("flac")

    write(path, selected(tiers))

    assert taglib_tags(path)["MOOD"] == [USER_MOOD, *expected]


# ---- Navidrome kit ---------------------------------------------------------------------------


def calibrations() -> list[dict[str, Any]]:
    heads = {"mood_happy": ["happy", "non_happy"], "mood_party": ["party", "non_party"],
             "mtg_jamendo_moodtheme": ["calm", "happy"], "genre_discogs400": ["Rock---Punk"]}  # fmt: skip
    return [{"model_key": MODEL, "head_name": head, "label": label} for head, labels in heads.items()
            for label in labels]  # fmt: skip


def test_navidrome_kit_declares_the_score_keys_taglib_sees_and_a_playlist_per_mood(
    tmp_path: Path, make_file: Callable[..., Path], library_root: Path
) -> None:
    dest = tmp_path / "exports" / "navidrome"
    (dest / "playlists").mkdir(parents=True)
    (dest / "playlists" / "gone.nsp").write_text("{}")  # a term no model gives any more

    kit = export_navidrome_kit(calibrations(), dest, options=TagOptions(), tiers=TierConfig(),
                               library_roots=[library_root])  # fmt: skip

    config = tomllib.loads(kit.toml.read_text())
    assert {name: (tag["Type"], len(tag["Aliases"])) for name, tag in config["Tags"].items()} == {
        "nom_party": ("float", 2), "nom_mood_happy_happy": ("float", 2),
        "nom_mtg_jamendo_moodtheme_happy": ("float", 2), "nom_calm": ("float", 2),
    }  # fmt: skip  (two heads name "happy": one tag each; no negative labels, no genre head)
    # The aliases hold the keys as TagLib (Navidrome's reader) names them, in lower case.
    for extension in ("m4a", "mp3", "flac"):
        path = make_file(extension)
        write(path, {score_key("cal", MODEL, "mood_party", "party", ["non_party"]): "0.910000"})
        (read,) = [key.lower() for key in taglib_tags(path) if key.startswith("NOM:CAL")]
        assert read in config["Tags"]["nom_party"]["Aliases"]

    playlists = {path.name: json.loads(path.read_text()) for path in (dest / "playlists").iterdir()}
    assert sorted(playlists) == ["calm.nsp", "happy.nsp", "not_happy.nsp", "not_party.nsp", "party.nsp"]
    happy = playlists["happy.nsp"]
    assert set(happy) == {"name", "comment", "all", "sort", "limit"}
    assert happy["all"] == [{"is": {"mood": "happy"}}] and happy["name"] == "Mood: Happy"
    assert isinstance(happy["limit"], int) and happy["sort"] == "random"


def test_navidrome_kit_never_goes_into_a_library_folder(tmp_path: Path, library_root: Path) -> None:
    with pytest.raises(ValueError, match="inside the library folder"):
        export_navidrome_kit(calibrations(), library_root / "navidrome", options=TagOptions(),
                             tiers=TierConfig(), library_roots=[library_root])  # fmt: skip
    assert list(library_root.iterdir()) == []


def test_opened_audio_reports_no_mood_where_the_file_has_none(make_file: Callable[..., Path]) -> None:
    path = make_file("opus")
    audio = mutagen.File(path)
    del audio.tags["MOOD"]
    audio.save()
    assert keys.MOOD not in OpenedAudio(path).state().standard
    write(path, selected(TIERS))
    assert taglib_tags(path)["MOOD"] == ["happy", "party"]
