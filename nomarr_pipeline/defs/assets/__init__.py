"""Dagster assets: thin adapters that call the domain packages with a store."""
