"""Real Fashion-MNIST rows (with captions) as WebDataset shards, streamed Parquet files and an ImageFolder tree,
and tiny recipes that train from them, for the streaming tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.datasets.fashion_mnist import CLASS_NAMES, FashionMNISTOptions, load_fashion_mnist
from mmssl.recipe import load_yaml

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
ROWS = 96


def fashion_rows(limit: int = ROWS) -> list[dict[str, Any]]:
    return list(load_fashion_mnist(FashionMNISTOptions(split="train", limit=limit), Path(".")).rows)


def pack_shards(output: Path, limit: int = ROWS, shard_size: int = 20) -> Path:
    """``mmssl data pack`` of the first ``limit`` Fashion-MNIST training rows; returns the index file."""
    spec = f"{{source: fashion_mnist, split: train, limit: {limit}}}"
    result = CliRunner().invoke(app, ["data", "pack", spec, "--output", str(output), "--shard-size", str(shard_size)])
    assert result.exit_code == 0, result.output
    return output / "index.json"


def write_parquet(folder: Path, limit: int = ROWS, files: int = 3) -> Path:
    """The rows as ``files`` Parquet files written by ``datasets`` (an Image column, a ClassLabel label)."""
    import datasets
    from PIL import Image

    rows = fashion_rows(limit)
    features = datasets.Features(
        image=datasets.Image(), caption=datasets.Value("string"), label=datasets.ClassLabel(names=CLASS_NAMES)
    )
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(limit), files)):
        table = datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(rows[j]["image"]) for j in part],
                "caption": [rows[j]["caption"] for j in part],
                "label": [rows[j]["label"] for j in part],
            },
            features=features,
        )
        table.to_parquet(str(folder / f"part-{i:02d}.parquet"))
    return folder


def write_folder(root: Path, limit: int = ROWS) -> Path:
    """The images as ``root/CLASS/NNNNN.png`` (the ImageFolder layout)."""
    from PIL import Image

    for i, row in enumerate(fashion_rows(limit)):
        folder = root / CLASS_NAMES[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row["image"]).save(folder / f"{i:05d}.png")
    return root


def tiny_tree(train: dict[str, Any], batch_size: int = 8, steps: int = 6, image_only: bool = False) -> dict:
    """The tiny test recipe on ``train`` (no evaluations), checkpointing every 3 steps."""
    tree = load_yaml(TINY)
    tree["data"] = {"train": train}
    tree["evaluations"] = []
    tree["train"].update(batch_size=batch_size, steps=steps, checkpoint_every=3, warmup_steps=1)
    if image_only:
        tree["modalities"] = {"image": tree["modalities"]["image"]}
        tree["objectives"] = [o for o in tree["objectives"] if o["name"] in ("simclr", "mae")]
    return json.loads(json.dumps(tree))
