"""Fashion-MNIST as a source of image rows with templated captions.

Looks for the four IDX files in ``root``, then in Debian's ``dataset-fashion-mnist`` location, then in the
mmssl cache, and downloads the standard copy there only when ``download: true``.
"""

from __future__ import annotations

import gzip
import os
import urllib.request
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, register_source

CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
CAPTION_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {} on a plain background.",
    "a product photo of a {}.",
    "a black and white photo of a {}.",
]
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTOptions(SourceOptions):
    split: Literal["train", "test"] = Field("train", description="Official split.")
    root: str | None = Field(None, description="Folder with the IDX .gz files; default: Debian's, then the cache.")
    download: bool = Field(False, description="Download the standard copy into the cache if no folder has it.")
    captions: list[str] = Field(
        default_factory=lambda: list(CAPTION_TEMPLATES),
        description="Caption templates with {} for the class name; row i uses template i mod len.",
    )


def cache_root() -> Path:
    return Path(os.environ.get("MMSSL_CACHE", Path.home() / ".cache" / "mmssl")) / "fashion-mnist"


def find_root(root: str | None, split: str, download: bool) -> Path:
    candidates = [Path(root)] if root else [DEBIAN_ROOT, cache_root()]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES[split]):
            return folder
    if download and not root:
        folder = cache_root()
        folder.mkdir(parents=True, exist_ok=True)
        for name in FILES[split]:
            tmp = folder / (name + ".part")
            urllib.request.urlretrieve(DOWNLOAD_URL + name, tmp)
            tmp.replace(folder / name)
        return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files {FILES[split]} not found in {looked}; install Debian's dataset-fashion-mnist, "
        "set `root`, or set `download: true`"
    )


def read_idx(path: Path, offset: int) -> np.ndarray:
    """The bytes after the ``offset``-byte header of a gzipped IDX file; a damaged file raises naming itself."""
    try:
        with gzip.open(path) as handle:
            data = handle.read()
        return np.frombuffer(data, np.uint8, offset=offset)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise ValueError(
            f"Fashion-MNIST file {path} is damaged ({type(err).__name__}: {err}); delete it and reinstall "
            "dataset-fashion-mnist or download it again (`download: true`)"
        ) from err


@register_source("fashion_mnist", FashionMNISTOptions)
def load_fashion_mnist(options: FashionMNISTOptions, base: Path) -> Source:
    """Rows ``{"image": uint8 [28, 28], "caption": str, "label": int}``."""
    folder = find_root(options.root, options.split, options.download)
    images_file, labels_file = FILES[options.split]
    images = read_idx(folder / images_file, 16).reshape(-1, 28, 28)
    labels = read_idx(folder / labels_file, 8)
    n = min(len(labels), options.limit or len(labels))
    templates = options.captions
    rows = [
        {
            "image": images[i],
            "caption": templates[i % len(templates)].format(CLASS_NAMES[labels[i]]),
            "label": int(labels[i]),
        }
        for i in range(n)
    ]
    return Source(rows, list(CLASS_NAMES), origin=str(folder / images_file), columns=["image", "caption", "label"])
