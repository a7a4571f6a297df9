"""Partitions: one dynamic partition per model head, key ``"{model_key}:{head_name}"``, and
the backfill policy of head-partitioned assets."""

from __future__ import annotations

import warnings

import dagster as dg

HEADS = "heads"
heads_partitions = dg.DynamicPartitionsDefinition(name=HEADS)

# One run serves many heads (one backbone pass per file for all of them: docs/ARCHITECTURE.md §8).
# Dagster 1.13 calls the `backfill_policy` parameter beta and warns at every definition of an
# asset using it, i.e. in every process that loads the code location (each step of a run, the
# code server): noise that says nothing to a user. The assets import this module first.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
SINGLE_RUN = dg.BackfillPolicy.single_run()
