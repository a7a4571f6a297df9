"""Dagster pipeline that keeps a music library auto-tagged by Essentia TensorFlow models."""

__version__ = "0.1.0"
