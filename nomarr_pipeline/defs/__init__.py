"""The Dagster code location's parts; ``nomarr_pipeline.definitions`` assembles them."""
