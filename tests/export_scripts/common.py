"""Helpers of the export check scripts: each runs in a fresh Python process that must never import mmssl."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


def fashion_mnist_test_images(rows: list[int]) -> np.ndarray:
    """Rows of the Fashion-MNIST test split as uint8 [N, 28, 28], read from the idx file with numpy only."""
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return data[rows]


def reference(path: str) -> dict[str, torch.Tensor]:
    """What ``mmssl embed`` wrote (embeddings, index, labels)."""
    return load_file(path)


def report(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Print the max abs difference of unit-normalised embeddings as JSON and check mmssl stayed out."""
    assert "mmssl" not in sys.modules and not any(m.startswith("mmssl") for m in sys.modules), "mmssl was imported"
    ours = torch.nn.functional.normalize(ours.double(), dim=-1)
    theirs = torch.nn.functional.normalize(theirs.double(), dim=-1)
    print(json.dumps({"check": name, "max_abs_diff": float((ours - theirs).abs().max()), "rows": len(ours)}))
