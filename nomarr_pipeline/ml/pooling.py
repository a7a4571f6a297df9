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


def trimmed_mean(patch_values: np.ndarray, proportion: float = TRIM_PROPORTION) -> np.ndarray:
    """Mean over axis 0 without the ``floor(n * proportion)`` lowest and highest rows per column."""
    if not 0.0 <= proportion < 0.5:
        raise ValueError(f"trim proportion must be in [0, 0.5), got {proportion}")
    count = patch_values.shape[0]
    if count == 0:
        raise ValueError("cannot pool zero patches")
    cut = int(count * proportion)
    ordered = np.sort(patch_values, axis=0)
    return ordered[cut : count - cut].mean(axis=0)


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
    means = trimmed_mean(values)
    stds = values.std(axis=0)
    return PooledLabels(
        values=tuple(float(v) for v in means),
        stds=tuple(float(s) for s in stds),
        patches=int(values.shape[0]),
    )
