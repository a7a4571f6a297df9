"""Temp copies that name their writer, and the sweep that deletes only dead writers' ones
(liveness asked of real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nomarr_pipeline.tagging.temps import (
    FOREIGN_TEMP_AGE_S,
    Owner,
    is_alive,
    is_tag_write_temp,
    owner_of,
    process_start,
    remove_abandoned_temps,
    temp_prefix,
    this_host,
    this_process,
)


def temp_of(folder: Path, owner: Owner, stem: str = "01 - track", suffix: str = ".flac") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{temp_prefix(Path(stem + suffix), owner)}ab12_xyz{suffix}"
    path.write_bytes(b"a temp copy")
    return path


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: no such process any more
    return process.pid


def test_a_temp_name_records_its_writer() -> None:
    owner = Owner("nas-01.home", 4242, 987654)
    name = temp_prefix(Path("/music/a/My.Song - live.mp3"), owner) + "k3x_9qzz.mp3"
    assert name.startswith(".My.Song - live.nomarr-tmp-nas-01.home-4242-987654-")
    assert is_tag_write_temp(name) and owner_of(name) == owner
    assert owner_of(".x.nomarr-tmp-abc123.mp3") is None, "a name from an older writer has no owner"
    assert not is_tag_write_temp("track.nomarr-tmp-1.mp3") and owner_of("song.mp3") is None


def test_liveness_of_real_processes(live_process: subprocess.Popen[bytes]) -> None:
    me = this_process()
    assert me.host == this_host() and me.pid == os.getpid() and me.start > 0
    assert is_alive(me)
    running = Owner(this_host(), live_process.pid, process_start(live_process.pid) or 0)
    assert is_alive(running)
    assert not is_alive(Owner(this_host(), dead_pid(), 1))
    # The pid runs, but it is another process than the one that made the temp: pid reused.
    assert not is_alive(Owner(this_host(), live_process.pid, running.start - 100))
    live_process.kill()  # killed, not reaped (no wait): a zombie until the fixture reaps it
    deadline = time.monotonic() + 10
    while process_start(live_process.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process(live_process.pid).status() == psutil.STATUS_ZOMBIE
    assert not is_alive(running), "a zombie is not a live writer"


def test_the_sweep_deletes_dead_writers_temps_anywhere_and_keeps_live_ones(
    tmp_path: Path, live_process: subprocess.Popen[bytes]
) -> None:
    root = tmp_path / "music"
    host = this_host()
    running = Owner(host, live_process.pid, process_start(live_process.pid) or 0)
    dead = [
        temp_of(root / "Artist" / "Album", Owner(host, dead_pid(), 12345)),
        temp_of(
            root / "deep" / "er" / "still", Owner(host, live_process.pid, running.start + 7), suffix=".mp3"
        ),
    ]
    kept = [
        temp_of(root / "Artist" / "Album", running, stem="02"),
        temp_of(root, this_process(), stem="mine"),
        temp_of(root / "shared", Owner("other-host", 1, 1), stem="remote"),
        root / "Artist" / "Album" / "01 - track.flac",
    ]
    kept[-1].write_bytes(b"a track")
    old_foreign = [
        temp_of(root / "shared", Owner("other-host", 2, 2), stem="old remote"),
        root / "shared" / ".legacy.nomarr-tmp-abc123.ogg",
    ]
    old_foreign[-1].write_bytes(b"from an older writer")
    a_day_ago = time.time() - FOREIGN_TEMP_AGE_S - 60
    for path in old_foreign:
        os.utime(path, (a_day_ago, a_day_ago))

    removed = remove_abandoned_temps([root])

    assert sorted(removed) == sorted(dead + old_foreign)
    assert all(path.exists() for path in kept)
    assert not any(path.exists() for path in dead + old_foreign)


def test_a_batch_cleaning_up_after_itself_removes_its_own_temps(tmp_path: Path) -> None:
    me = this_process()
    mine, other = (
        temp_of(tmp_path, me, stem="mine"),
        temp_of(tmp_path, Owner(this_host(), 1, process_start(1) or 0), stem="init"),
    )
    assert remove_abandoned_temps([tmp_path]) == []
    assert remove_abandoned_temps([tmp_path], also=me) == [mine]
    assert other.exists()
