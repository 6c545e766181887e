"""Synthetic 1-D spectra for the example ``spectra`` plugin (examples/plugin_spectra).

Each spectrum is a sloped baseline plus a few Gaussian peaks whose positions depend on the class, with random
heights, widths, small position jitter and noise; lengths vary, so batches need padding. Written as a JSONL
manifest whose ``spectrum`` column names ``.npy`` files (even rows) and two-column ``.csv`` files (odd rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Peak centres (fraction of the axis) of each class.
CLASS_PEAKS = {"alkane": (0.2, 0.55), "alcohol": (0.35, 0.7, 0.85), "ketone": (0.15, 0.45, 0.6)}


def make_spectrum(label: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """One spectrum of ``length`` points. Shapes: -> [length] float32."""
    axis = np.linspace(0.0, 1.0, length)
    y = 0.1 + 0.05 * rng.standard_normal() * axis
    for centre in CLASS_PEAKS[label]:
        position = centre + 0.01 * rng.standard_normal()
        width = rng.uniform(0.01, 0.03)
        y = y + rng.uniform(0.5, 1.5) * np.exp(-0.5 * ((axis - position) / width) ** 2)
    return (y + 0.02 * rng.standard_normal(length)).astype(np.float32)


def write_manifest(folder: Path, rows: int = 48, seed: int = 0, lengths: tuple[int, int] = (96, 128)) -> Path:
    """Write ``rows`` spectra and ``folder/manifest.jsonl`` (columns ``spectrum``: file name relative to the
    manifest, read with ``path_columns: [spectrum]``; ``label``: class name); returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = sorted(CLASS_PEAKS)
    lines = []
    for i in range(rows):
        label = labels[i % len(labels)]
        y = make_spectrum(label, int(rng.integers(lengths[0], lengths[1] + 1)), rng)
        if i % 2 == 0:
            name = f"s{i:03d}.npy"
            np.save(folder / name, y)
        else:
            name = f"s{i:03d}.csv"
            x = np.arange(len(y), dtype=np.float32)
            np.savetxt(folder / name, np.stack([x, y], axis=1), delimiter=",", header="x,intensity", comments="")
        lines.append(json.dumps({"spectrum": name, "label": label}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
