"""A small histogram image per head (its labels together) for Dagster metadata.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``): no display is
needed, and no process-wide backend is switched under other code's feet.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nomarr_pipeline.calibration.histogram import HistogramSpec
from nomarr_pipeline.store.protocol import SparseHistogram

# 10,000 bins are far more than 600 pixels can show; bars are merged to this many.
DISPLAY_BINS = 200


def _display_counts(hist: SparseHistogram, spec: HistogramSpec) -> tuple[np.ndarray, int]:
    display_bins = min(DISPLAY_BINS, spec.bins)
    counts = np.zeros(display_bins, dtype=np.int64)
    if hist.bins:
        indices = np.fromiter((index for index, _ in hist.bins), dtype=np.int64)
        weights = np.fromiter((count for _, count in hist.bins), dtype=np.int64)
        target = np.minimum(indices * display_bins // spec.bins, display_bins - 1)
        np.add.at(counts, target, weights)
    return counts, display_bins


def histogram_png(
    histograms: list[tuple[str, SparseHistogram, float | None, float | None]],
    spec: HistogramSpec,
    title: str,
) -> bytes:
    """One PNG (about 600 x 250 px) for a head: each label's in-range counts as a line, its
    p5/p95 as dashed marks of the same colour."""
    figure = Figure(figsize=(6, 2.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    footer = []
    for (label, hist, p5, p95), colour in zip(histograms, _COLOURS * len(histograms), strict=False):
        counts, display_bins = _display_counts(hist, spec)
        edges = np.linspace(spec.lo, spec.hi, display_bins + 1)
        marks = ", ".join(f"{name} {value:.3f}" for name, value in (("p5", p5), ("p95", p95))
                          if value is not None)  # fmt: skip
        axes.stairs(counts, edges, color=colour, lw=1.2, label=f"{label} ({marks})" if marks else label)
        for value in (p5, p95):
            if value is not None:
                axes.axvline(value, color=colour, lw=0.8, ls="--")
        footer.append(f"{label}: n {hist.n}, outside {hist.underflow_count + hist.overflow_count}")
    axes.set_xlim(spec.lo, spec.hi)
    axes.set_title(title, fontsize=9)
    axes.tick_params(labelsize=7)
    axes.set_ylabel("files", fontsize=7)
    axes.set_xlabel("; ".join(footer), fontsize=7)
    if histograms:
        axes.legend(fontsize=7, loc="best", framealpha=0.8)
    figure.tight_layout()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def png_markdown(png: bytes, alt: str = "histogram") -> str:
    """Inline Markdown image for ``MetadataValue.md`` (Dagster shows data URIs)."""
    encoded = base64.b64encode(png).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"
