"""Kill campaign (issue 14): SIGKILL a real ``nomarr-pipeline write-tags`` — its whole process
group, as a crash or ``kill -9 -- -PGID`` would — again and again at random moments, many more
times in a row than the ``tag_writing`` pool has slots, on a library of every supported format;
then run ``write-tags`` once more, which must finish without help.

Before each attempt every calibration moves a little, so every file has new tags to write. The
first kills, one more than the pool has slots, and half of the others land while the tag-writing
step holds its slot (the first ones at its claim, the others a random moment within the time
the first run took to write every file), the rest at a random moment after the start. After
each kill every file must carry either the tag set it had before the attempt or the complete
new one (what the store now says, through the writer's own selection), never a mix, and still
open. After the final run:

- every file decodes (ffmpeg) to exactly its original audio;
- every file carries exactly its expected tags; nothing is pending, no file has a write error;
- the library holds exactly the names it held before the campaign (no temp copy, nothing else);
- every run a kill left unfinished is marked failed and no pool slot stays claimed.

    .venv/bin/python scripts/kill_campaign.py [--kills 50] [--copies 6] [--seed 14] [--keep DIR]

Prints one line per kill and a tally; exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The process helpers of the test suite drive the real command line the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg

from nomarr_pipeline.tagging.temps import is_tag_write_temp
from nomarr_pipeline_tests.cli.cli_processes import (
    PipelineFolder,
    build_library,
    claimed_slots,
    shift_calibrations,
    write_one_head_models,
)
from nomarr_pipeline_tests.tagging.library_state import (
    LibrarySnapshot,
    expected_tags,
    mixed,
    names_in,
    settle_problems,
    tags_in,
)


def writing_seconds(instance: dg.DagsterInstance) -> float:
    """How long the latest ``written_tags`` step took, from its start to its success."""
    (record,) = instance.get_run_records(dg.RunsFilter(job_name="tagging_job"), limit=1)
    times = {
        event.dagster_event_type: event.timestamp
        for event in instance.all_logs(record.dagster_run.run_id)
        if event.step_key == "written_tags" and event.dagster_event_type
    }
    return times[dg.DagsterEventType.STEP_SUCCESS] - times[dg.DagsterEventType.STEP_START]


def kill_once(
    folder: PipelineFolder, rng: random.Random, variant: int, in_step: float | None
) -> tuple[str, str | None]:
    """One killed write-tags (``in_step``: so many seconds after its tag-writing step claimed its
    slot; ``None``: at a random moment): (where the kill landed, the run it left unfinished)."""
    shift_calibrations(folder, variant)
    with folder.instance() as instance:
        known = {run.run_id for run in instance.get_runs()}
        command = folder.start("write-tags")
        deadline = time.monotonic() + (180 if in_step is not None else rng.uniform(0.5, 8.0))
        while time.monotonic() < deadline and command.returncode is None:
            if in_step is not None and any(run_id not in known for run_id in claimed_slots(instance)):
                time.sleep(in_step)
                break
            time.sleep(0.02)
        finished_first = command.returncode is not None
        command.kill()
        runs = [run for run in instance.get_runs() if run.run_id not in known]
        holding = [run_id for run_id in claimed_slots(instance) if run_id not in known]
    unfinished = [run.run_id for run in runs if not run.is_finished]
    if finished_first:
        return "finished before the kill", None
    if holding:
        return "while holding a tag_writing slot", holding[0]
    if unfinished:
        return "in a run, outside the tag-writing step", unfinished[0]
    return ("after its runs ended" if runs else "before its run started"), None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--copies", type=int, default=6, help="copies of the 13 demo tracks")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="nomarr-kill-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    folder = PipelineFolder(root)
    started = time.monotonic()
    try:
        build_library(folder.library, args.copies)
        write_one_head_models(folder.models)
        first = folder.run("run")
        if first.returncode != 0:
            print(first.stderr, file=sys.stderr)
            return 1
        original = LibrarySnapshot.take(folder.library)
        with folder.instance() as instance:
            limit = instance.event_log_storage.get_concurrency_info("tag_writing").limit or 1
            writing = writing_seconds(instance)
        extensions = sorted({Path(path).suffix for path in original.audio})
        print(f"library: {len(original.audio)} files ({' '.join(extensions)}); tag_writing limit {limit}; "
              f"writing them took {writing:.1f} s; load average {os.getloadavg()[0]:.1f}")  # fmt: skip

        tally: dict[str, int] = {}
        left: list[str] = []
        mixes: list[str] = []
        most_temps, in_slot_streak, longest_streak = 0, 0, 0
        for kill in range(args.kills):
            before = tags_in(folder.library)
            # The first ones at the claim: more kills in a row than the pool has slots.
            in_step = 0.0 if kill <= limit else rng.uniform(0, 1.2 * writing) if rng.random() < 0.5 else None
            landed, run_id = kill_once(folder, rng, kill % 2 + 1, in_step)
            now = tags_in(folder.library)
            with folder.store() as store:
                expected = expected_tags(store, folder.library)
            mixes += [f"kill {kill + 1}: {path}" for path in mixed(before, now, expected)]
            written = sum(now[path] == expected.get(path) != before.get(path) for path in now)
            temps = sum(is_tag_write_temp(name) for name in names_in(folder.library))
            most_temps = max(most_temps, temps)
            tally[landed] = tally.get(landed, 0) + 1
            in_slot_streak = in_slot_streak + 1 if landed.startswith("while holding") else 0
            longest_streak = max(longest_streak, in_slot_streak)
            if run_id:
                left.append(run_id)
            run = f" (run {run_id[:8]})" if run_id else ""
            print(f"kill {kill + 1:3d}: {landed:<42} {written:3d} files newly written, {temps:2d} temp "
                  f"copies, {len(mixed(before, now, expected))} mixed{run}")  # fmt: skip

        final_started = time.monotonic()
        final = folder.run("write-tags", timeout=1800)
        seconds = time.monotonic() - final_started
        with folder.instance() as instance:
            slots = claimed_slots(instance)
            statuses = {run_id: instance.get_run_by_id(run_id).status for run_id in left}
        with folder.store() as store:
            problems = settle_problems(store, folder.library, original)
        failed = sum(status == dg.DagsterRunStatus.FAILURE for status in statuses.values())

        print("\ntally:")
        for landed, count in sorted(tally.items(), key=lambda item: -item[1]):
            print(f"  {count:4d}  {landed}")
        print(f"kills: {args.kills}; most in a row while a tag_writing slot was held: {longest_streak} "
              f"(limit {limit}); most temp copies left by one kill: {most_temps}")  # fmt: skip
        print(f"files carrying a mix of old and new tags after a kill: {len(mixes)} {mixes[:5]}")
        print(f"final write-tags: exit {final.returncode} after {seconds:.0f} s")
        print(f"runs left unfinished by the kills: {len(left)}, marked failed: {failed}")
        print(f"pool slots still claimed: {len(slots)}")
        print(f"after the final run: {len(problems)} problems (audio, tags, pending, write errors, names)")
        for problem in problems[:20]:
            print(f"  {problem}")
        ok = (final.returncode == 0 and not slots and failed == len(left) and not problems and not mixes
              and longest_streak > limit)  # fmt: skip
        print(f"campaign took {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")
        print("result:", "ok" if ok else "FAILED")
        if final.returncode != 0:
            print(final.stderr[-3000:], file=sys.stderr)
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
