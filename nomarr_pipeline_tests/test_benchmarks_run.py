"""Every script in ``benchmarks/`` runs to its end at its smallest size and prints its figures.

Each script runs as a user runs it: a subprocess of this interpreter, from the repository
root. The test parses the lines that carry the script's result (medians, ratios to its
baseline, goal check-boxes, counts of what it did), so a script that breaks or stops printing
its result fails here. The figures are never compared with the goals: they time a tiny run
on a shared machine.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline_tests.postgres_server import SKIP_REASON

REPO = Path(__file__).resolve().parent.parent
NUM = r"[-+]?\d[\d,]*(?:\.\d+)?"
RUN_TIMEOUT_S = 600


def matches(out: str, pattern: str, count: int | None = None) -> list[tuple[str, ...]]:
    """The groups of every output line matching ``pattern`` (at least one, or ``count``)."""
    found = [m.groups() for line in out.splitlines() if (m := re.search(pattern, line))]
    assert found, f"no line matches {pattern!r} in:\n{out}"
    assert count is None or len(found) == count, f"{len(found)} lines match {pattern!r}, not {count}:\n{out}"
    return found


def number(text: str) -> float:
    value = float(text.replace(",", ""))
    assert math.isfinite(value), text
    return value


def figures(*texts: str) -> None:
    """Measured figures: numbers, never negative (a tiny run may round one to 0)."""
    for text in texts:
        assert number(text) >= 0, f"{text} is not a measured figure"


def goal_boxes(out: str, count: int) -> None:
    matches(out, r"^\s+\[[x ]\] \S", count)


# ---- what each script must print ------------------------------------------------------------


def check_scan(out: str) -> None:
    ((_, files, folders),) = matches(out, rf"^first scan:\s+({NUM}) s\s+\((\d+) files, (\d+) folders\)")
    assert int(files) == 20
    matches(out, rf"^unchanged rescan:\s+({NUM}) s\s+median of 1 ")
    matches(out, rf"^full rescan:\s+({NUM}) s\s+median")
    ((_, sensor_folders),) = matches(out, rf"^sensor check:\s+({NUM}) s\s+median, (\d+) folders")
    assert sensor_folders == folders
    ((ratio,),) = matches(out, rf"^rescan / full rescan ratio: ({NUM})$")
    ((rss,),) = matches(out, rf"^peak RSS:\s+({NUM}) MB")
    figures(ratio, rss)


def check_calibration(out: str) -> None:
    ((values,),) = matches(out, rf"^store: .*\), ({NUM}) values$")
    assert number(values) == 40
    engines = matches(out, rf"^(sqlite|postgres) histogram runs: ({NUM}) s$", count=2)
    assert [engine for engine, _ in engines] == ["sqlite", "postgres"]
    rows = matches(out, rf"^(histogram \(\w+\)|load-all \(sqlite\))\s+({NUM})\s+({NUM}) MB", count=3)
    assert [name for name, *_ in rows] == ["histogram (sqlite)", "histogram (postgres)", "load-all (sqlite)"]
    ((time_ratio, memory_ratio),) = matches(
        out, rf"^ratios: load-all / histogram = ({NUM})x time, ({NUM})x memory$"
    )
    ((pg_ratio,),) = matches(out, rf"^postgres / sqlite = ({NUM})x time$")
    figures(time_ratio, memory_ratio, pg_ratio)
    goal_boxes(out, 5)


def check_predictions_write(out: str) -> None:
    matches(out, r"^20 files x 2 labels = 40 rows per run, batches of \d+ files$")
    ((copy, executemany, again),) = matches(
        out, rf"^PostgreSQL, one process: copy ({NUM}) rows/s, executemany ({NUM}) rows/s, "
             rf"copy again ({NUM}) rows/s$"
    )  # fmt: skip
    figures(copy, executemany, again)
    runs = matches(out, rf"^(sqlite|postgres)\s+(\d) process\(es\):\s+({NUM}) s,\s+({NUM}) rows/s$", count=4)
    assert [(engine, processes) for engine, processes, *_ in runs] == [
        ("sqlite", "1"), ("sqlite", "2"), ("postgres", "1"), ("postgres", "2")
    ]  # fmt: skip
    figures(*(rate for *_, rate in runs))
    scaling = matches(out, rf"^(sqlite|postgres) scaling vs 1 process\(es\): 1: x1\.00, 2: x({NUM})$", 2)
    figures(*(ratio for _, ratio in scaling))


def check_recalibration(out: str) -> None:
    matches(out, r"^20 files needing recalibration, 40 values$")
    assert [engine for (engine,) in matches(out, r"^\[(\w+)\] calibrated 2 labels in ", count=2)] == [
        "sqlite", "postgres"
    ]  # fmt: skip
    # Per engine: the two cases, then the readers=1 baseline (case "new" again).
    runs = matches(out, rf"^\[(\w+)\] .*: ({NUM}) s for (\d+) files \(batch 8, (\d+) reader / (\d+) writ", 6)
    assert all(int(files) == 20 for _, _, files, *_ in runs)
    assert [int(readers) for *_, readers, _ in runs][2::3] == [1, 1]
    speed_ups = matches(out, rf"^\[(\w+)\] baseline readers=1 \(inline\): speed-up x({NUM})$", count=2)
    figures(*(ratio for _, ratio in speed_ups))
    matches(out, rf"^\[postgres\] VACUUM before the run: ({NUM}) s", count=3)
    step_names = "claim_files|tier_inputs|compute_mood_tiers|finish_claimed|count_files"
    steps = matches(out, rf"^  ({step_names})\S* .*?({NUM}) ms", count=10)
    assert len({step for step, _ in steps}) == 5
    matches(out, rf"^  \[[x ]\] (sqlite|postgres): ({NUM}) s, <= ({NUM}) s for 40 values$", count=4)
    ratios = matches(out, rf"^  \[[x ]\] PostgreSQL <= SQLite \(postgres / sqlite = ({NUM})x\)$", count=2)
    figures(*(ratio for (ratio,) in ratios))


STEPS = r"(first scan|unchanged rescan|sensor tick|status)"


def check_library_scale(out: str) -> None:
    runs = matches(out, rf"^  {STEPS}\s+({NUM}) s\s+peak RSS\s+({NUM}) MB", count=8)
    figures(*(rss for *_, rss in runs))
    # Nothing changed between the scan and the tick: the sensor must skip.
    matches(out, rf"tick ({NUM}) s: SkipReason ", count=2)
    matches(out, r"^ratios, 20 files vs 10 \(2x the files\):$")
    ratios = matches(out, rf"^  {STEPS}\s+time x\s*({NUM})\s+peak RSS x\s*({NUM})$", count=4)
    assert [step for step, *_ in ratios] == ["first scan", "unchanged rescan", "sensor tick", "status"]
    figures(*(figure for _, *values in ratios for figure in values))


def check_tag_writing(out: str) -> None:
    matches(out, r"^3 files per run \(mp3 \d+ KB, flac \d+ KB, m4a \d+ KB\), 20 nom: keys, 1 repetitions")
    ((bare,),) = matches(out, rf"^\s+bare in-place loop: median\s+({NUM}) files/s \(runs: ")
    pipeline = matches(
        out, rf"^\s+pipeline, (writers=1|default writers): median\s+({NUM}) files/s .*, ({NUM}) x bare$", 2
    )
    figures(bare, *(figure for _, *values in pipeline for figure in values))
    matches(out, rf"^floor 300 files/s with the default settings: (meets|BELOW) \(({NUM})\)$")
    ((ratio,),) = matches(
        out, rf"^sweep of abandoned temps over 100 files in 1 folders: median {NUM} s .*; ratio ({NUM})$"
    )
    figures(ratio)


def check_tag_verify(out: str) -> None:
    ((read_back, written),) = matches(
        out, rf"^verify 3 written files \(mp3, flac, m4a\): median ({NUM}) s per 1,000 files \(runs: .*\); "
        rf"writing them took ({NUM}) s per 1,000$"
    )
    figures(read_back, written)


def check_wide_head(out: str) -> None:
    matches(out, r"^20 files x 400 labels = 8,000 values per grouping$")
    for name in ("calibration", "partition metadata"):
        ((narrow, wide, ratio),) = matches(out, rf"^{name} \(s\)\s+({NUM})\s+({NUM})\s+({NUM})$")
        figures(narrow, wide, ratio)
    ((table,),) = matches(out, rf"^label table of the wide head: ({NUM}) characters")
    figures(table)
    goal_boxes(out, 2)
    sets = matches(out, rf"^  (8 mood heads|\+ 400 styles.*?)\s+(\d+) keys: write\s+({NUM}) ms/file, read\s+"
                        rf"({NUM}) ms/file; pipeline\s+({NUM}) files/s$", 3)  # fmt: skip
    narrow_keys, before_keys, now_keys = (int(keys) for _, keys, *_ in sets)
    assert narrow_keys == 20 and before_keys == 20 + 2 * 400 and narrow_keys < now_keys < before_keys
    figures(*(rate for *_, rate in sets))
    ((_, _, ratio),) = matches(out, rf"^  the wide head costs ({NUM}) ms/file to write with every label, "
                                    rf"({NUM}) ms/file now; pipeline now / before x({NUM})$")  # fmt: skip
    figures(ratio)


def check_backbone_pass(out: str) -> None:
    ((patches,),) = matches(out, r"^3 s of audio, (\d+) patches, 1 repeats; load ")
    assert int(patches) >= 1
    ways = matches(out, rf"^(embeddings_only|one_pass|two_passes)\s+({NUM}) s\s+ratio ({NUM})$", count=3)
    assert [name for name, *_ in ways] == ["embeddings_only", "one_pass", "two_passes"]
    assert ways[0][2] == "1.000"  # the baseline
    figures(*(ratio for *_, ratio in ways))
    ((ratio, _),) = matches(out, rf"^one_pass / embeddings_only = ({NUM}) \(goal <= 1\.05\) (OK|ABOVE GOAL)$")
    figures(ratio)


VARIANT = r"(?:bare|pipeline) (?:tensorflow|onnx): [^\n]*?"


def check_analysis(out: str) -> None:
    # Each engine's pipeline run analyses the file, the run after it nothing.
    claimed = matches(out, r"^    files per shard \(claimed at run time\): \[([\d, ]*)\]$", count=4)
    assert [sum(int(n) for n in shares.split(",") if n.strip()) for (shares,) in claimed] == [1, 0, 1, 0]
    runs = matches(out, rf"^  run 1 ({VARIANT})\s+({NUM}) s wall,\s+({NUM}) s CPU$", 6)
    assert sorted(name.split(":")[0] for name, *_ in runs) == [
        "bare onnx", "bare onnx", "bare tensorflow", "bare tensorflow",
        "pipeline onnx", "pipeline tensorflow"]
    rows = matches(out, rf"^  ({VARIANT})\s+({NUM})\s+({NUM})\s+({NUM})$", count=6)
    figures(*(rate for _, rate, *_ in rows))
    for engine in ("tensorflow", "onnx"):
        ((wall, cpu, empty_wall),) = matches(
            out, rf"^  {engine}: pipeline ({NUM}) x best bare loop \(wall\), ({NUM}) x \(CPU\); a run with "
                 rf"nothing to do costs ({NUM}) s wall")
        figures(wall, cpu, empty_wall)
    ((ratio, less_cpu, per_minute),) = matches(
        out, rf"^onnx against tensorflow: pipeline ({NUM}) x files/s \(goal >= 2\.0\), ({NUM}) x less CPU; "
             rf"onnx ({NUM}) CPU s per audio minute \(goal <= 1\.5\)$")
    figures(ratio, less_cpu, per_minute)
    matches(out, rf"^sizing: ({NUM}) s of CPU per minute of audio on onnx, ({NUM}) on tensorflow")
    projection = matches(out, rf"^\s+(\d+) machine\(s\):\s+({NUM}) h$", count=3)
    figures(*(hours for _, hours in projection))
    stages = matches(out, rf"^  (tensorflow|onnx): decode ({NUM}) s \(\d+ %\), resample ({NUM}) s \(\d+ %\), "
                          rf"features ({NUM}) s \(\d+ %\), network ({NUM}) s \(\d+ %\), store ({NUM}) s "
                          rf"\(\d+ %\); total ({NUM}) s$", count=2)
    figures(*(figure for _, *numbers in stages for figure in numbers))
    options = matches(out, rf"^  (optimisation .+?|int8 dynamic, .+?)\s+({NUM}) s,\s+({NUM}) x default, "
                           rf"deviation (\S+)", count=6)
    assert sum(name.startswith("int8") for name, *_ in options) == 2
    figures(*(factor for _, _, factor, _ in options))


# ---- the runs -------------------------------------------------------------------------------


def demo_models(tmp: Path) -> Path:
    """The generated models: their ``msd-musicnn-1`` stands in for the real weights."""
    write_demo_models(tmp / "models")
    return tmp / "models"


@dataclass(frozen=True)
class Bench:
    script: str
    arguments: Callable[[Path], list[str]]  # tmp_path -> the smallest run's arguments
    check: Callable[[str], None]
    postgres: str = ""  # "own": the script starts its throwaway server; "url": the session's server


BENCHES = [
    Bench("bench_scan", lambda tmp: ["--files", "20", "--per-folder", "10", "--repeat", "1"], check_scan),
    Bench("bench_calibration",
          lambda tmp: ["--files", "20", "--labels", "2", "--repeat", "1", "--db-dir", str(tmp / "db")],
          check_calibration, postgres="own"),
    Bench("bench_predictions_write",
          lambda tmp: ["--files", "20", "--labels", "2", "--processes", "1", "2", "--compare-insert", "20",
                       "--db-dir", str(tmp / "db")],
          check_predictions_write, postgres="url"),
    Bench("bench_recalibration",
          lambda tmp: ["--files", "20", "--labels", "2", "--batch-size", "8", "--db-dir", str(tmp / "db")],
          check_recalibration, postgres="url"),
    Bench("bench_library_scale",
          lambda tmp: ["--files", "20", "--baseline-files", "10", "--per-folder", "10",
                       "--dir", str(tmp / "work")],
          check_library_scale),
    Bench("bench_tag_writing",
          lambda tmp: ["--files", "3", "--repeats", "1", "--seconds", "1", "--sweep-files", "100"],
          check_tag_writing),
    Bench("bench_tag_writing", lambda tmp: ["--verify", "--files", "3", "--repeats", "1", "--seconds", "1"],
          check_tag_verify),
    Bench("bench_wide_head",
          lambda tmp: ["--files", "20", "--tag-files", "3", "--repeats", "1", "--db-dir", str(tmp / "db")],
          check_wide_head),
    Bench("bench_backbone_pass", lambda tmp: ["--models-dir", str(demo_models(tmp)), "--seconds", "3",
                                              "--repeats", "1"], check_backbone_pass),
    # One file: fewer files than workers (some bare workers idle). One shard count keeps it short.
    Bench("bench_analysis",
          lambda tmp: ["--files", "1", "--seconds", "3", "--repeats", "1", "--shards", "1"],
          check_analysis),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[bench.script for bench in BENCHES])
def test_benchmark_runs_and_prints_its_figures(
    bench: Bench, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The repository first: its package, not whichever one the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    arguments = bench.arguments(tmp_path)
    if bench.postgres and SKIP_REASON:
        pytest.skip(SKIP_REASON)
    if bench.postgres == "url":
        database = request.getfixturevalue("postgres_db")
        arguments += ["--store-url", database.url]
        env["NOMARR_PG_PASSWORD"] = database.password
    if bench.postgres != "own":
        # Temp folders under tmp_path. A throwaway server's folder must stay out of it (its
        # parents are private to root, the server runs as the postgres user).
        (tmp_path / "tmp").mkdir()
        env["TMPDIR"] = str(tmp_path / "tmp")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{bench.script}.py"), *arguments],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = f"{done.stdout}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{bench.script} exited {done.returncode}:\n{output}"
    bench.check(done.stdout)
