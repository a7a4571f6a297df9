from __future__ import annotations

import base64
import io

from matplotlib.image import imread

from nomarr_pipeline.calibration.histogram import HistogramSpec
from nomarr_pipeline.calibration.plots import histogram_png, png_markdown
from nomarr_pipeline.store.protocol import SparseHistogram


def test_png_size_and_markdown() -> None:
    hist = SparseHistogram([(i, 1 + i % 7) for i in range(0, 10_000, 13)], 4, 2)
    other = SparseHistogram([(i, 2) for i in range(5_000, 10_000, 7)], 0, 1)
    png = histogram_png([("happy", hist, 0.05, 0.95), ("non_happy", other, 0.5, None)], HistogramSpec(),
                        "effnet:mood_happy")  # fmt: skip
    assert png.startswith(b"\x89PNG")
    height, width = imread(io.BytesIO(png)).shape[:2]
    assert (width, height) == (600, 250)
    assert len(png) < 100_000
    markdown = png_markdown(png)
    assert markdown.startswith("![histogram](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1][:-1]) == png


def test_empty_histogram_and_no_percentiles_still_draw() -> None:
    png = histogram_png([("x", SparseHistogram([], 0, 0), None, None)], HistogramSpec(0.0, 1.0, 7), "x")
    assert png.startswith(b"\x89PNG")
