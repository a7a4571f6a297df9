"""The library-wide expected ``calibration_hash`` (docs/ARCHITECTURE.md §6): a file whose
stored hash differs needs recalibration.

MD5 (hex) of the ``"|"``-joined, sorted ``f"{_key}:{version}:{p5!r}:{p95!r}"`` of every state
with p5 and p95 set. ``repr(float)`` round-trips a double exactly, so the same numbers hash
alike on every engine and any change in force changes the hash (whether a change matters is
the drift tolerance's call, not rounding's). States with ``p95 <= p5`` count: a label going
from unusable to usable must trigger recalibration. No calibration hashes the empty string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


def calibration_hash_line(state: Mapping[str, Any]) -> str:
    version = state.get("version")
    # 5 and 5.0 are the same version whichever engine or JSON parser produced the number.
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    return f"{state['_key']}:{version}:{float(state['p5'])!r}:{float(state['p95'])!r}"


def expected_calibration_hash(states: Iterable[Mapping[str, Any]]) -> str:
    lines = sorted(
        calibration_hash_line(state)
        for state in states
        if state.get("p5") is not None and state.get("p95") is not None
    )
    return hashlib.md5("|".join(lines).encode()).hexdigest()
