"""A plain head for calibration tests and benchmarks, where no models folder is discovered."""

from __future__ import annotations

from dataclasses import dataclass

from nomarr_pipeline.ml.discovery import head_partition_key


@dataclass(frozen=True)
class HeadRef:
    """What calibration reads of ``nomarr_pipeline.ml.discovery.Head``."""

    model_key: str
    head_name: str
    version: int = 1
    labels: tuple[str, ...] = ()
    kind: str | None = None

    @property
    def partition_key(self) -> str:
        return head_partition_key(self.model_key, self.head_name)
