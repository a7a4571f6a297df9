"""Setup problems end in one ``error:`` line naming what is wrong and one ``next:`` line saying
what to set, exit status 2, no traceback, and nothing created where it should not be (issue
14, item 5 and the bad-configuration line of its corpus). Read-only files and full disks are
real: a read-only bind mount or a tiny tmpfs in a private mount namespace of the command
(``unshare -m``, root only; the machine's own mounts are never touched)."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.cli import runner
from nomarr_pipeline.store import StoreError, StoreFullError, open_store
from nomarr_pipeline.store.sqlite import SqliteStore
from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder, build_library, write_one_head_models
from nomarr_pipeline_tests.ml.audio_fixtures import write_wav


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_clear_error(err: str, error_starts: str, next_starts: str) -> None:
    """Exactly the two lines: ``error: …`` then ``next: …``."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"error: {error_starts}"), err
    assert lines[1].startswith(f"next: {next_starts}"), err


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def music(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_wav(tmp_path / "music" / "a.wav")
    write_one_head_models(tmp_path / "models")
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "music"


def _no_runs(home: Path) -> bool:
    if not (home / "dagster.yaml").exists():
        return True
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return not instance.get_runs()


# ---- the store URL ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "scan", "run", "write-tags"])
def test_a_store_in_a_folder_that_does_not_exist_is_refused_and_nothing_created(
    tmp_path: Path, monkeypatch, capsys, dagster_home: Path, music: Path, command: str
) -> None:
    monkeypatch.setenv("NOMARR_STORE_URL", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
    code, _, err = _run_cli(capsys, command)
    assert code == 2
    says = f"NOMARR_STORE_URL names {tmp_path / 'no/such/dir/x.db'}, but the folder"
    _assert_one_clear_error(err, says, "set NOMARR_STORE_URL to")
    assert not (tmp_path / "no").exists()
    assert _no_runs(dagster_home)


def test_the_default_store_folder_is_created(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NOMARR_DATA_DIR", str(tmp_path / "data"))
    code, out, _ = _run_cli(capsys, "status")
    assert code == 0 and "no library scanned yet" in out
    assert (tmp_path / "data" / "nomarr.sqlite3").is_file()

    monkeypatch.setenv("NOMARR_DATA_DIR", str(tmp_path / "none" / "data"))
    code, _, err = _run_cli(capsys, "status")
    assert code == 2
    _assert_one_clear_error(err, f"NOMARR_DATA_DIR is {tmp_path / 'none/data'}", "set NOMARR_DATA_DIR to")
    assert not (tmp_path / "none").exists()


def test_the_default_export_folder_is_created_with_a_database_server_too(tmp_path: Path, monkeypatch) -> None:
    """The embedded store creates the data folder; a server store does not, yet the default
    export folder lives in it (issue 14: the first `run` on PostgreSQL failed on this)."""
    monkeypatch.setenv("NOMARR_STORE_URL", "postgresql://nomarr@127.0.0.1:5432/nomarr")
    monkeypatch.setenv("NOMARR_DATA_DIR", str(tmp_path / "data"))
    assert runner.require_export_dir() == tmp_path / "data" / "calibration"
    assert (tmp_path / "data" / "calibration").is_dir()


def test_the_store_never_creates_folders(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "no" / "dir" / "x.db")
    with pytest.raises(StoreError, match="does not exist"):
        store.list_libraries()
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "url", ["foo", "sqlite://relative.db", "sqlite:relative.db", "ftp://host/x", "sqlite://user@host/x"]
)
def test_a_malformed_store_url_is_one_line_naming_the_variable(url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    code, _, err = _run_cli(capsys, "status")
    assert code == 2
    _assert_one_clear_error(err, "NOMARR_STORE_URL cannot be used: ", "set NOMARR_STORE_URL to")


def test_a_relative_sqlite_url_is_relative_to_the_working_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """SQLAlchemy's convention: three slashes and a relative path, four for an absolute one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOMARR_STORE_URL", "sqlite:///stores/relative.db")
    (tmp_path / "stores").mkdir()
    code, out, _ = _run_cli(capsys, "status")
    assert code == 0 and "no library scanned yet" in out
    assert (tmp_path / "stores" / "relative.db").is_file()
    assert not Path("/stores").exists()


# ---- other settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "command", "says"),
    [
        ("NOMARR_FILE_WRITE_MODE", "sometimes", "status", "is 'sometimes', not a write mode"),
        ("NOMARR_AUTO_WRITE_TAGS", "maybe", "status", "is 'maybe', not true or false"),
        ("NOMARR_WRITE_RAW_SCORES", "2", "run", "is '2', not true or false"),
        ("NOMARR_ANALYSIS_SHARDS", "two", "status", "is 'two', not a whole number of at least 1"),
        ("NOMARR_EXECUTOR", "spark", "run", "is 'spark', not one of multiprocess, dask, celery, k8s"),
        ("NOMARR_CALIBRATION_CRON", "bogus", "scan", "is 'bogus', not a cron schedule"),
        ("NOMARR_SCHEDULE_TIMEZONE", "Mars/Base", "status", "is 'Mars/Base', not a time zone"),
        ("NOMARR_LIBRARY_ROOTS", "{file}", "scan", "names {file}, which is not a folder"),
        ("NOMARR_LIBRARY_ROOTS", "{music}:{missing}", "run", "names {missing}, which does not exist"),
        ("NOMARR_MODELS_DIR", "{file}", "run", "names {file}, which is not a folder"),
        ("NOMARR_EXPORT_DIR", "{file}", "run", "is {file}, which is not a folder"),
        ("NOMARR_EXPORT_DIR", "{file}", "export-calibrations", "is {file}, which is not a folder"),
        ("NOMARR_EXPORT_DIR", "{missing}/x", "run", "is {missing}/x, but its parent folder does not exist"),
        ("DAGSTER_HOME", "{file}", "scan", "is {file}, which is not a folder"),
        ("DAGSTER_HOME", "{missing}/home", "scan", "is {missing}/home, but its parent folder does not exist"),
        ("DAGSTER_HOME", "relative/home", "write-tags", "is relative/home, not an absolute path"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    variable: str, value: str, command: str, says: str, tmp_path: Path, monkeypatch, capsys, music: Path
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "a-file").write_text("not a folder")
    names = {"file": tmp_path / "a-file", "music": music, "missing": tmp_path / "missing"}
    monkeypatch.setenv(variable, value.format(**names))
    if command == "export-calibrations":
        store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
        store.save_calibrations([_usable_state()], [])
        store.close()
        monkeypatch.setenv("NOMARR_STORE_URL", f"sqlite:///{tmp_path / 'store.sqlite3'}")
    code, _, err = _run_cli(capsys, command)
    assert code == 2
    _assert_one_clear_error(err, f"{variable} {says.format(**names)}", f"set {variable} to")
    assert not (tmp_path / "missing").exists()
    assert (tmp_path / "a-file").read_text() == "not a folder"
    assert _no_runs(tmp_path / "dagster_home")


def _usable_state() -> dict:
    from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
    from nomarr_pipeline.calibration.state import compute_state

    state, _ = compute_state(
        None,
        model_key="effnet-discogs-effnet-1",
        head_name="mood_happy",
        label="happy",
        version=1,
        spec=HistogramSpec(),
        result=PercentileResult(0.1, 0.9, 100, 0, 0),
        now_ms=1_768_564_800_000,
    )
    return state


def test_a_bad_setting_is_the_code_locations_load_error_in_plain_words(tmp_path: Path, monkeypatch) -> None:
    """What ``dagster dev`` shows: the code server's load error names the variable and the fix."""
    from nomarr_pipeline.cli.launch import CodeLocationLauncher

    monkeypatch.setenv("NOMARR_CALIBRATION_CRON", "bogus")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance, CodeLocationLauncher(instance) as launcher:
        problem = launcher.location_error()
    assert problem is not None
    assert "NOMARR_CALIBRATION_CRON is 'bogus', not a cron schedule" in problem
    assert "next: set NOMARR_CALIBRATION_CRON to five fields" in problem


# ---- a full store, on the engine's own terms ----------------------------------------------


def test_a_full_sqlite_store_raises_a_store_error_and_keeps_what_it_had(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    store.ensure_library({"_key": "lib", "name": "library", "root_path": str(tmp_path)})
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL
    files = [{"_key": f"f{i}", "library_id": "lib", "path": f"{tmp_path}/{i:0200d}"} for i in range(500)]
    with pytest.raises(StoreFullError, match=r"the disk holding the SQLite store .* is full"):
        store.upsert_files(files)
    assert store.file_counts()["total"] == 0  # the transaction was rolled back whole
    assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


# ---- read-only files and full disks, for real -------------------------------------------------


def _private_mounts_work() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


needs_private_mounts = pytest.mark.skipif(
    not _private_mounts_work(),
    reason="needs root and `unshare -m` (a private mount namespace) for a real read-only mount or full disk",
)


def _in_private_mounts(folder: PipelineFolder, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` (sh) in a mount namespace of its own: its mounts vanish with it. ``$NP``
    runs nomarr-pipeline; each command's exit status is echoed as ``rc=<n>``."""
    np = " ".join(shlex.quote(part) for part in folder.command())
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"NP={shlex.quote(np)}\n{script}"],
        env=folder.env,
        cwd=folder.root,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def scanned(tmp_path: Path) -> PipelineFolder:
    folder = PipelineFolder(tmp_path)
    build_library(folder.library, 1)
    write_one_head_models(folder.models)
    assert folder.run("scan").returncode == 0
    return folder


def _store_rows(path: Path) -> tuple[str, int]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0], db.execute(
            "SELECT COUNT(*) FROM library_files"
        ).fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow
def test_a_read_only_store_is_refused_before_any_run(scanned: PipelineFolder) -> None:
    store = scanned.store_path
    if os.geteuid() != 0:  # an ordinary user: the file's own permissions
        store.chmod(0o444)
        result = scanned.run("write-tags")
        assert result.returncode == 2
        err = result.stderr
    else:
        if not _private_mounts_work():
            pytest.skip("root ignores file permissions; a read-only mount needs `unshare -m`")
        q = shlex.quote(str(store))
        result = _in_private_mounts(
            scanned,
            f"mount --bind {q} {q} && mount -o remount,ro,bind {q}\n"
            "$NP write-tags; echo rc=$?\n$NP run; echo rc=$?\n$NP status >/dev/null; echo rc=$?\n",
        )
        codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
        assert codes == ["rc=2", "rc=2", "rc=0"], result.stdout + result.stderr
        err = result.stderr
    assert "Traceback" not in err
    assert f"error: the SQLite store {store} cannot be written: {store} is" in err
    assert "next: make the store file and its folder writable" in err
    with scanned.instance() as instance:
        assert {run.job_name for run in instance.get_runs()} == {"library_scan_job"}  # nothing more ran


@pytest.mark.slow
@needs_private_mounts
def test_a_full_store_disk_mid_run_is_a_clear_error_and_the_rerun_completes(scanned: PipelineFolder) -> None:
    """The store's folder on a tmpfs with room for a few transactions: the run stops when
    the disk is full. Then room is made and the same command finishes the work."""
    data = shlex.quote(str(scanned.data))
    kept = shlex.quote(str(scanned.root / "kept.sqlite3"))
    result = _in_private_mounts(
        scanned,
        f"""
        cp -a {data} /tmp/nomarr-data-copy-$$ || exit 9
        mount -t tmpfs -o size=2m tmpfs {data} || exit 9
        cp -a /tmp/nomarr-data-copy-$$/. {data}/ && rm -rf /tmp/nomarr-data-copy-$$
        avail=$(df --output=avail -B1 {data} | tail -1)
        head -c $((avail - 98304)) /dev/zero > {data}/filler  # room for a few transactions
        $NP run; echo rc=$?
        rm {data}/filler
        $NP run >/dev/null; echo rc=$?
        cp {data}/nomarr.sqlite3 {kept}
        """,
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=0"], result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert f"error: database: the disk holding the SQLite store {scanned.store_path} is full" in err
    assert "next: free space on the store's disk" in err
    integrity, files = _store_rows(scanned.root / "kept.sqlite3")
    assert integrity == "ok" and files == len([p for p in scanned.library.rglob("*") if p.is_file()])
    with scanned.instance() as instance:
        runs = instance.get_runs()
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS  # the last run, after room was made


@pytest.mark.slow
@needs_private_mounts
def test_a_full_or_read_only_dagster_home_is_a_clear_error(scanned: PipelineFolder) -> None:
    home = shlex.quote(str(scanned.home))
    result = _in_private_mounts(
        scanned,
        f"""
        cp -a {home} /tmp/nomarr-home-copy-$$ || exit 9
        mount -t tmpfs -o size=4m tmpfs {home} || exit 9
        cp -a /tmp/nomarr-home-copy-$$/. {home}/ && rm -rf /tmp/nomarr-home-copy-$$
        head -c 100m /dev/zero > {home}/filler 2>/dev/null
        $NP scan; echo rc=$?
        rm {home}/filler
        mount -o remount,ro {home}
        $NP scan; echo rc=$?
        mount -o remount,rw {home}
        $NP scan >/dev/null; echo rc=$?
        """,
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=2", "rc=0"], result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert f"error: the Dagster instance in DAGSTER_HOME {scanned.home} cannot be written: " in err
    assert f"error: cannot write into DAGSTER_HOME {scanned.home}: Read-only file system" in err
    assert err.count("next: ") == 2


def test_a_dagster_home_this_user_cannot_write(tmp_path: Path, monkeypatch, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the read-only mount test covers it")
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    write_wav(tmp_path / "music" / "a.wav")
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    code, _, err = _run_cli(capsys, "scan")
    assert code == 2
    says = f"cannot write into DAGSTER_HOME {home}: Permission denied"
    _assert_one_clear_error(err, says, "make it writable")



def test_two_stores_never_share_a_dagster_instance(tmp_path: Path, monkeypatch) -> None:
    """By default each store's instance lives in its data folder; a shared DAGSTER_HOME is
    refused to the second store, naming both."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in ("a", "b"):
        monkeypatch.setenv("NOMARR_DATA_DIR", str(tmp_path / name))
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        with runner.dagster_instance() as instance:
            assert Path(instance.root_directory) == tmp_path / name / "dagster_home"

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "a" / "dagster_home"))
    with pytest.raises(runner.UserError) as refused:
        runner.dagster_instance()
    problem = refused.value.problem
    assert f"keeps the runs of the store sqlite:///{tmp_path / 'a' / 'nomarr.sqlite3'}" in problem
    assert f"not of sqlite:///{tmp_path / 'b' / 'nomarr.sqlite3'}" in problem
    assert "unset DAGSTER_HOME" in refused.value.next_step

@pytest.mark.slow
@needs_private_mounts
def test_a_store_in_a_read_only_folder_is_named_with_what_to_do(scanned: PipelineFolder) -> None:
    """SQLite writes its -wal and -shm files beside the store, even to read: in a read-only
    folder it says only "unable to open database file" (issue 25, item 4)."""
    data = shlex.quote(str(scanned.data))
    result = _in_private_mounts(
        scanned,
        f"mount --bind {data} {data} && mount -o remount,ro,bind {data}\n"
        "$NP status; echo rc=$?\n$NP run; echo rc=$?\n",
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=2"], result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err and "database is running" not in err
    store = scanned.store_path
    refusal = f"the SQLite store {store} cannot be opened: {store} is on a read-only file system"
    assert err.count(refusal) == 2
    assert err.count("next: make the store file and its folder writable") == 2
    files = len([p for p in scanned.library.rglob("*") if p.is_file()])
    assert _store_rows(scanned.store_path) == ("ok", files)


@pytest.mark.slow
@needs_private_mounts
def test_a_full_library_disk_during_tag_writing_is_a_clear_error_and_nothing_is_lost(
    scanned: PipelineFolder,
) -> None:
    """The library on a tmpfs with room for no tag-write copy: the run stops with `error:` and
    `next:`; once there is room, the same command writes every file (issue 25, item 4)."""
    from nomarr_pipeline_tests.tagging.library_state import LibrarySnapshot, settle_problems

    original = LibrarySnapshot.take(scanned.library)
    library = shlex.quote(str(scanned.library))
    after = shlex.quote(str(scanned.root / "library-after"))
    result = _in_private_mounts(
        scanned,
        f"""
        cp -a {library} /tmp/nomarr-library-copy-$$ || exit 9
        used=$(du -sk {library} | cut -f1)
        mount -t tmpfs -o size=$((used + 64))k tmpfs {library} || exit 9
        cp -a /tmp/nomarr-library-copy-$$/. {library}/ && rm -rf /tmp/nomarr-library-copy-$$
        $NP run; echo rc=$?
        mount -o remount,size=256m {library}
        $NP write-tags >/dev/null; echo rc=$?
        cp -a {library} {after}
        """,
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=0"], result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err and "[Errno 28]" not in err
    assert "error: tag writing for library" in err and "disk full while writing tags" in err
    assert "next: free space on the library's disk, then run `nomarr-pipeline write-tags`" in err
    shutil.rmtree(scanned.library)
    (scanned.root / "library-after").rename(scanned.library)
    with scanned.store() as store:
        assert settle_problems(store, scanned.library, original) == []


@pytest.mark.slow
@needs_private_mounts
def test_a_read_only_library_is_named_with_what_to_do_and_nothing_is_lost(scanned: PipelineFolder) -> None:
    """Tag writing on a read-only mount: every file fails alone and says why, the command says
    what to do, and once the library is writable `write-tags` writes every file (issue 25, item 4)."""
    from nomarr_pipeline_tests.tagging.library_state import LibrarySnapshot, settle_problems

    original = LibrarySnapshot.take(scanned.library)
    library = shlex.quote(str(scanned.library))
    # Each file's own reason is in the store (and the run's log): print them between the runs.
    query = "SELECT write_error FROM library_files WHERE write_error IS NOT NULL"
    errors = shlex.join([sys.executable, "-c", "import sqlite3, sys; [print('write_error:', e) for (e,) in "
                         f"sqlite3.connect(sys.argv[1]).execute({query!r})]", str(scanned.store_path)])
    result = _in_private_mounts(
        scanned,
        f"mount --bind {library} {library} && mount -o remount,ro,bind {library}\n"
        f"$NP run; echo rc=$?\n{errors}\nmount -o remount,rw,bind {library}\n$NP write-tags; echo rc=$?\n",
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=0"], result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    first, second = err.split("next: make the library's folders and files writable", 1)
    reasons = [line for line in result.stdout.splitlines() if line.startswith("write_error:")]
    assert reasons and all("(the library is on a read-only file system)" in line for line in reasons), reasons
    assert "warning: the tags of " in first and "could not be written" in first
    assert "warning: the tags of " not in second  # all written the second time
    with scanned.store() as store:
        assert settle_problems(store, scanned.library, original) == []
