from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from nomarr_pipeline.store import Store, open_store

TAGGER_VERSION = "tv1"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'nomarr.sqlite3'}")
    yield store
    store.close()


def populate(
    store: Store,
    heads: Mapping[tuple[str, str], Mapping[str, Sequence[object]]],
    *,
    library_id: str = "lib1",
    analyzed: bool = True,
) -> list[str]:
    """File ``f{i:05d}`` gets value ``i`` of every label's list; returns the file keys."""
    count = max((len(v) for labels in heads.values() for v in labels.values()), default=0)
    keys = [f"f{i:05d}" for i in range(count)]
    store.upsert_files(
        [
            {
                "_key": key,
                "library_id": library_id,
                "path": f"/music/{key}.flac",
                "size": 1,
                "mtime_ns": 1,
                "scanned_at": 1,
                "analyzed_at": 2 if analyzed else None,
            }
            for key in keys
        ]
    )
    tags = []
    for (model_key, head_name), labels in heads.items():
        for label, values in labels.items():
            for index, value in enumerate(values):
                tags.append(
                    {
                        "_key": f"{keys[index]}|{model_key}|{head_name}|{label}",
                        "file_id": keys[index],
                        "model_key": model_key,
                        "head_name": head_name,
                        "label": label,
                        "value": value,
                        "std": 0.01,
                        "calibrated_value": None,
                        "nomarr_only": True,
                        "tagger_version": TAGGER_VERSION,
                    }
                )
    store.write_predictions(tags)
    return keys
