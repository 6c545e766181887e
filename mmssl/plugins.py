"""Modality plugins and plugin files: the ``mmssl.modalities`` registry and ``plugins: [file.py]`` of a recipe.

A plugin file may register components of any kind: importing it runs its decorators (``@register_objective``,
``@register_source``, ``@register_evaluator``, ``@register_encoder_library``, ``@register_export_format``), and a
``plugin`` (or ``plugins``) it defines is registered as a modality.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from mmssl.modality import ModalityPlugin
from mmssl.registry import REGISTRIES, Registry, RegistryError

ENTRY_POINT_GROUP = "mmssl.modalities"
MODALITIES: Registry[ModalityPlugin[Any]] = Registry("modality", group=ENTRY_POINT_GROUP)


class PluginError(RuntimeError):
    """A plugin could not be loaded; the message names its entry point or file."""


def register_modality(plugin: ModalityPlugin[Any]) -> ModalityPlugin[Any]:
    """Register a modality plugin under its ``name`` (what the entry point or a plugin file's ``plugin`` does)."""
    return MODALITIES.register(plugin.name, plugin)  # type: ignore[return-value]


def _register_modalities(obj: object, origin: str) -> list[str]:
    items = obj if isinstance(obj, list | tuple) else [obj]
    for item in items:
        if not isinstance(item, ModalityPlugin):
            raise PluginError(f"{origin}: expected a ModalityPlugin, got {type(item).__name__}")
    try:
        return MODALITIES.add(list(items), origin)
    except RegistryError as err:
        raise PluginError(str(err).replace("by another package", "by another plugin")) from None


def _counts() -> list[int]:
    return [len(registry._items) for registry in REGISTRIES]


def load_entry_points() -> None:
    """Register every plugin in the ``mmssl.modalities`` entry-point group (once per process)."""
    MODALITIES.load()


def plugin_file_path(path: str | Path, base: Path | None = None) -> Path:
    """Where a recipe's ``plugins:`` entry points: relative paths are resolved against ``base``."""
    file = Path(path)
    if not file.is_absolute() and base is not None:
        file = base / file
    return file.resolve()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def plugin_file_records(files: list[str], base: Path | None) -> dict[str, dict[str, str]]:
    """``{entry as written: {"path": resolved, "sha256": digest}}`` of a recipe's plugin files (kept in run.json)."""
    paths = {f: plugin_file_path(f, base) for f in files}
    return {f: {"path": str(path), "sha256": file_sha256(path)} for f, path in paths.items()}


def check_plugin_files(files: list[str], base: Path | None, recorded: dict[str, dict[str, str]], where: str) -> None:
    """Refuse plugin files that differ from the ones a run recorded (by SHA-256).

    Raises:
        PluginError: A file is missing, was not recorded, or its content changed; the message names it.
    """
    for entry in files:
        file = plugin_file_path(entry, base)
        if entry not in recorded:
            raise PluginError(f"{where}: plugin file {entry} ({file}) is not one the run recorded; not importing it")
        if not file.is_file():
            raise PluginError(f"{where}: plugin file {entry} not found (looked at {file})")
        digest = file_sha256(file)
        if digest != recorded[entry].get("sha256"):
            raise PluginError(
                f"{where}: plugin file {file} changed since the run recorded it (sha256 {digest[:12]}... now, "
                f"{str(recorded[entry].get('sha256'))[:12]}... then); refusing to import it"
            )


def load_plugin_file(path: str | Path, base: Path | None = None) -> list[str]:
    """Import a plugin file: its decorators register components of any kind, its ``plugin(s)`` a modality.

    Args:
        path: A ``.py`` file; relative paths are resolved against ``base`` (the recipe's folder).
        base: Folder of the recipe naming the file.

    Returns:
        The names of the modalities it registered.

    Raises:
        PluginError: The file is missing, fails to import, or registers nothing.
    """
    file = plugin_file_path(path, base)
    if not file.is_file():
        raise PluginError(f"plugin file {path} not found (looked at {file})")
    module_name = "mmssl_user_plugin_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    registered = False
    if module_name in sys.modules:
        module = sys.modules[module_name]
        registered = True  # imported before: its decorators ran then
    else:
        spec = importlib.util.spec_from_file_location(module_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        before = _counts()
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise PluginError(f"plugin file {file} failed to import: {err}") from err
        registered = _counts() != before
    obj = getattr(module, "plugins", None) or getattr(module, "plugin", None)
    if obj is None:
        if registered:
            return []
        raise PluginError(
            f"plugin file {file} defines neither `plugin` nor `plugins` and registers nothing through a decorator"
        )
    return _register_modalities(obj, f"plugin file {file}")


def get_modality(name: str) -> ModalityPlugin[Any]:
    return MODALITIES.get(name)


def all_modalities() -> list[ModalityPlugin[Any]]:
    return [plugin for _, plugin in MODALITIES.items()]
