"""The library-wide expected ``calibration_hash`` (docs/ARCHITECTURE.md §6).

A file whose stored ``calibration_hash`` differs from this value needs recalibration.

Definition: MD5 (hex) of the ``"|"``-joined, sorted lines ``f"{_key}:{version}:{p5!r}:{p95!r}"``
over every calibration state whose p5 and p95 are both set.

* ``repr(float)`` is the shortest string that round-trips the double exactly, so the same
  stored numbers hash the same on every platform and through every engine (JSON keeps
  doubles exactly), and any change of a value in force, however small, changes the hash.
  Whether a change is big enough to matter is decided earlier, by the drift tolerance in
  ``state.compute_state``; hashing must not second-guess it by rounding.
* States with ``p95 <= p5`` are included: they are in force too (they mean "do not
  calibrate this label"), and a label going from unusable to usable must trigger
  recalibration.
* No calibration at all hashes the empty string (``d41d8cd98f00b204e9800998ecf8427e``), a
  stable value, so a fresh library is recalibrated once (calibrated values stay null) and
  again as soon as the first calibration exists.
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
