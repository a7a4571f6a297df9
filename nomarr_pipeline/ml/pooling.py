"""Pooling per-patch head outputs into one value per label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRIM_PROPORTION = 0.1


class NonFiniteOutputError(ValueError):
    """A model produced NaN or infinite values."""


@dataclass(frozen=True)
class PooledLabels:
    """One value and the per-patch standard deviation for each label, in label order."""

    values: tuple[float, ...]
    stds: tuple[float, ...]
    patches: int


def trimmed_mean(patch_values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 without the ``floor(n * TRIM_PROPORTION)`` lowest and highest rows per column."""
    count = patch_values.shape[0]
    cut = int(count * TRIM_PROPORTION)
    return np.sort(patch_values, axis=0)[cut : count - cut].mean(axis=0)


def pool_patches(patch_values: np.ndarray, label_count: int) -> PooledLabels:
    """Trimmed mean and std over patches of a ``[patches, labels]`` output."""
    values = np.asarray(patch_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != label_count:
        raise ValueError(
            f"model output has shape {values.shape}, expected [patches, {label_count}]"
        )
    if values.shape[0] == 0:
        raise ValueError("model output has no patches")
    if not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise NonFiniteOutputError(f"model output has {bad} NaN/infinite values")
    return PooledLabels(tuple(trimmed_mean(values).tolist()), tuple(values.std(axis=0).tolist()),
                        int(values.shape[0]))
