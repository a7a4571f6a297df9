"""Tag writing (docs/ARCHITECTURE.md §7): plain Python, no Dagster."""
