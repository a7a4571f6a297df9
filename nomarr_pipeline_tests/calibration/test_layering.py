"""The calibration domain stays plain Python (DESIGN.md §2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nomarr_pipeline.calibration as calibration


def test_no_dagster_import_in_source() -> None:
    package = Path(calibration.__file__).parent
    for path in package.glob("*.py"):
        text = path.read_text()
        assert "import dagster" not in text and "from dagster" not in text, path


def test_importing_the_domain_loads_neither_dagster_nor_matplotlib() -> None:
    code = (
        "import sys, nomarr_pipeline.calibration, nomarr_pipeline.calibration.recalibration;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
