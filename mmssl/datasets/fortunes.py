"""Debian's ``fortunes`` package (BSD ``fortune`` cookies) as text rows labelled by their category file.

The package installs 43 category files (``art``, ``computers``, ``science``, ...; 15,218 texts) under
``/usr/share/games/fortunes``; each holds texts separated by lines of a single ``%``. The label of a text is its
file name. By default only the categories with at least ``min_texts`` (300) texts are kept: 17 categories,
11,794 texts (9,471 train, 2,323 test), so every class has over 200 training texts. The offensive collection
(``fortunes-off``, the ``off/`` subfolder) is never read. Overstruck characters (``X`` backspace ``X``, in
``art``) are reduced to one character. The split is a stable hash of the text itself, so a text repeated within
a category never lands in both splits and the split does not depend on file order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, hash_share, register_source

#: Where Debian's ``fortunes`` package puts the category files.
ROOT = "/usr/share/games/fortunes"
_OVERSTRIKE = re.compile(r".\x08")


class FortunesOptions(SourceOptions):
    split: Literal["train", "test", "all"] = Field("train", description="Stable hash split of the texts.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the texts in the test split.")
    min_texts: int = Field(
        300, ge=1, description="Keep the categories (files) with at least this many texts (both splits counted)."
    )
    categories: list[str] | None = Field(
        None, description="Category files to read (overrides min_texts); default: every file with min_texts texts."
    )
    max_chars: int = Field(1000, ge=1, description="Keep the first characters of each text.")
    root: str = Field(ROOT, description="The folder of the category files (Debian package `fortunes`).")


def read_category(file: Path) -> list[str]:
    """The texts of one fortune file: split on lines holding a single ``%``, stripped, empty ones dropped."""
    raw = file.read_text(encoding="utf-8", errors="replace")
    raw = _OVERSTRIKE.sub("", raw).replace("\r\n", "\n")
    texts = re.split(r"^%[ \t]*$", raw, flags=re.MULTILINE)
    return [text.strip() for text in texts if text.strip()]


def category_files(root: Path) -> list[Path]:
    """The category files of ``root``: plain files without a suffix (``.dat`` indexes and ``.u8`` links left out),
    subfolders (``off/``) not entered."""
    return sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix)


@register_source("fortunes", FortunesOptions)
def load_fortunes(options: FortunesOptions, base_dir: Path) -> Source:
    """Rows ``{"text", "label", "category"}`` of the chosen split, in hash order; class names are the category file
    names in alphabetical order."""
    root = Path(options.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"fortunes: {root} not found; install Debian's `fortunes` package (bash scripts/install-data.sh)"
        )
    texts = {file.name: read_category(file) for file in category_files(root)}
    if options.categories is not None:
        missing = sorted(set(options.categories) - set(texts))
        if missing:
            raise ValueError(f"fortunes: no category file {missing} in {root} (found {sorted(texts)})")
        names = sorted(set(options.categories))
    else:
        names = sorted(name for name, found in texts.items() if len(found) >= options.min_texts)
    if not names:
        raise ValueError(f"fortunes: no category in {root} has {options.min_texts} texts")
    found = []
    for label, name in enumerate(names):
        for text in texts[name]:
            share = hash_share(f"fortunes/{text}")
            if options.split == "all" or (share < options.test_fraction) == (options.split == "test"):
                found.append((share, text, label, name))
    found.sort(key=lambda item: item[:3])
    rows = [{"text": text[: options.max_chars], "label": label, "category": name} for _, text, label, name in found]
    if options.limit is not None:
        rows = rows[: options.limit]
    return Source(rows, names, f"fortunes[{options.split}] ({root})", ["text", "label", "category"])
