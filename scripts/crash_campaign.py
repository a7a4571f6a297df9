"""Crash campaign (issue 14): SIGKILL real ``nomarr-pipeline`` commands, whole process group, at
random moments of the scan, the predictions (analysis), the calibration or the recalibration,
and check after each complete re-run that the store holds exactly the documents the same
commands leave uninterrupted (every collection, document by document; timestamps and claim
tokens aside: ``nomarr_pipeline_tests/store_dump.py``).

    .venv/bin/python scripts/crash_campaign.py --kills 10 --store sqlite --stage all
    .venv/bin/python scripts/crash_campaign.py --kills 10 --store postgres --stage analysis --outages 4

Two copies of one library are set up by one complete ``run`` each: a reference and one to kill
in. Per stage, the work is made again before each kill (``crash_runs.STAGES``: the library
touched and rescanned for the scan and the analysis, ``force-recalibration`` for the
recalibration), ``--in-a-row`` kills land, then the stage's command runs to its end and the
store is compared. ``--store postgres`` runs a throwaway PostgreSQL server (a database each);
``--outages`` then also stops that server (``immediate``) at a random moment of a predictions
run, for 1-20 s: the run must finish or fail with an error line, never a traceback, and the
re-run must converge. Prints one line per kill and a tally; exit status 0 when every re-run
converged.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nomarr_pipeline_tests.cli.cli_processes import build_library, write_one_head_models
from nomarr_pipeline_tests.crash_runs import (
    STAGES,
    Tally,
    check,
    converge,
    kill_campaign,
    new_folder,
    prepare,
    reference_documents,
    server_lost_during,
)
from nomarr_pipeline_tests.postgres_server import running_server


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10, help="kills per stage")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    parser.add_argument("--in-a-row", type=int, default=1, help="kills before each re-run")
    parser.add_argument("--outages", type=int, default=0, help="PostgreSQL server losses (postgres)")
    parser.add_argument("--copies", type=int, default=2, help="copies of the 13 demo tracks")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="nomarr-crash-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    tallies: dict[str, Tally] = {}
    outage_diverged = 0
    try:
        with running_server() if args.store == "postgres" else contextlib.nullcontext() as server:
            source = build_library(root / "source", args.copies)
            models = write_one_head_models(root / "models")

            def folder(name: str):
                if server is None:
                    return new_folder(root / name, source, models)
                url = server.url(server.create_database())
                return new_folder(root / name, source, models, store_url=url, pg_password=server.password)

            reference, killed = folder("reference"), folder("killed")
            for each in (reference, killed):
                check(each.run("run"))
            print(f"library: {sum(1 for p in source.rglob('*') if p.is_file())} files, store {args.store}")
            for name in stages:
                stage = STAGES[name]
                expected = reference_documents(reference, stage)
                started = time.monotonic()
                tallies[name] = kill_campaign(
                    killed, stage, expected, rng, args.kills, kills_before_rerun=args.in_a_row, say=print
                )
                print(f"{name}: {time.monotonic() - started:.0f} s")
            if server is not None and args.outages:
                stage = STAGES["analysis"]
                expected = reference_documents(reference, stage)
                for outage in range(args.outages):
                    prepare(killed, stage)
                    seconds = rng.uniform(1.0, 20.0)
                    where, command = server_lost_during(killed, stage, server, rng, seconds)
                    said = command.stdout + command.stderr
                    errors = [line for line in said.splitlines() if line.startswith("error:")]
                    outcome = "finished" if command.returncode == 0 else f"exit {command.returncode}"
                    traceback = " WITH A TRACEBACK" if "Traceback" in said else ""
                    print(f"outage {outage + 1}: {seconds:.1f} s {where}: {outcome}{traceback} {errors[:1]}")
                    problems = converge(killed, stage, expected)
                    if problems or traceback:
                        outage_diverged += 1
                        print("  the re-run did NOT converge:\n  " + "\n  ".join(problems))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print("\ntally:")
    for name, tally in tallies.items():
        landed = ", ".join(f"{count} {where}" for where, count in sorted(tally.landed.items()))
        print(f"  {name:<14} {tally.kills} kills ({landed}); re-runs that did not converge: {tally.diverged}")
    if args.outages:
        print(f"  server outages {args.outages}; re-runs that did not converge: {outage_diverged}")
    ok = not outage_diverged and all(tally.diverged == 0 for tally in tallies.values())
    print("result:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
