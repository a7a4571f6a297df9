"""Command line for headless use: ``nomarr-pipeline demo|scan``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

DEMO_DIR = Path(".nomarr-demo")


def _instance_home() -> Path:
    """The Dagster instance the CLI shares with ``dagster dev`` (``DAGSTER_HOME``)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute())))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    shipped = Path(__file__).resolve().parent.parent / "dagster.yaml"
    if not config.exists() and shipped.exists():
        shutil.copyfile(shipped, config)
    return home


def _run_job(job_name: str) -> bool:
    import dagster as dg

    from nomarr_pipeline.definitions import defs

    _instance_home()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, raise_on_error=False)
    return result.success


def cmd_scan(_: argparse.Namespace) -> int:
    return 0 if _run_job("library_scan_job") else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from nomarr_pipeline.demo import build_demo_library

    folder = Path(args.folder).absolute()
    library = build_demo_library(folder / "library")
    os.environ["NOMARR_LIBRARY_ROOTS"] = str(library)
    os.environ.setdefault("NOMARR_DATA_DIR", str(folder / "data"))
    print(f"demo library: {library}")
    ok = _run_job("library_scan_job")
    from nomarr_pipeline.store import open_store
    from nomarr_pipeline.settings import Settings

    settings = Settings.from_env()
    counts = open_store(settings.store_url).file_counts()
    print(f"store: {settings.store_url}")
    print(f"files: {counts['total']} ({counts['scan_errors']} with errors)")
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']} (see the runs with `dagster dev`)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nomarr-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build a demo library and run the pipeline on it")
    demo.add_argument("--folder", default=str(DEMO_DIR), help="where the demo library and data go")
    demo.set_defaults(func=cmd_demo)
    scan = sub.add_parser("scan", help="scan the configured library folders")
    scan.set_defaults(func=cmd_scan)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
