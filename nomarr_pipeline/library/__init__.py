"""Library scanning and change detection (plain Python, no Dagster)."""
