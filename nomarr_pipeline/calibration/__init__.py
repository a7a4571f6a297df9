"""Calibration domain (plain Python, no Dagster): DB histogram -> p5/p95 per (head, label),
calibration state and history, the expected ``calibration_hash``, mood tiers, exports."""
