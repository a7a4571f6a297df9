"""Partitions: one dynamic partition per model head, key ``"{model_key}:{head_name}"``."""

from __future__ import annotations

import dagster as dg

HEADS = "heads"
heads_partitions = dg.DynamicPartitionsDefinition(name=HEADS)
