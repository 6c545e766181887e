"""A synthetic data source: RGB images of horizontal, vertical or diagonal stripes (labels 0, 1, 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, register_source

CLASSES = ["horizontal", "vertical", "diagonal"]


class StripesOptions(SourceOptions):
    split: Literal["train", "test"] = "train"
    rows: int = Field(96, ge=3, description="Images to make.")
    size: int = Field(16, ge=4, description="Side of each image in pixels.")
    seed: int = Field(0, description="Seed of the images; the test split adds 1.")


def stripes(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Shapes: -> [size, size, 3] uint8; stripes of random period, phase and colour on noise."""
    y, x = np.mgrid[:size, :size]
    coord = (y, x, x + y)[label]
    period = int(rng.integers(2, 5))
    on = ((coord + int(rng.integers(period))) // max(period // 2, 1)) % 2 == 0
    colour = rng.uniform(0.5, 1.0, size=3)
    pixels = rng.uniform(0.0, 0.2, size=(size, size, 3)) + on[..., None] * colour
    return (pixels.clip(0, 1) * 255).astype(np.uint8)


@register_source("stripes", StripesOptions)
def load_stripes(options: StripesOptions, base: Path) -> Source:
    rng = np.random.default_rng(options.seed + (options.split == "test"))
    rows = [{"image": stripes(i % 3, options.size, rng), "label": i % 3} for i in range(options.rows)]
    rows = rows[: options.limit] if options.limit else rows
    return Source(rows, CLASSES, origin=f"stripes({options.split})", columns=["image", "label"])
