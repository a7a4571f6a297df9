"""Partitions: one dynamic partition per model head, key ``"{model_key}:{head_name}"``."""

from __future__ import annotations

import dagster as dg

heads_partitions = dg.DynamicPartitionsDefinition(name="heads")
