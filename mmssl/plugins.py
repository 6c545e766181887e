"""Discovery of modality plugins: the ``mmssl.modalities`` entry-point group and plugin files named in recipes."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from mmssl.modality import ModalityPlugin
from mmssl.registry import Registry

ENTRY_POINT_GROUP = "mmssl.modalities"
MODALITIES: Registry[ModalityPlugin] = Registry("modality")
FAILED: dict[str, str] = {}
"""Entry points that failed to load: name -> reason. They are reported, not fatal, unless asked for."""
_loaded_entry_points = False


class PluginError(RuntimeError):
    """A plugin could not be loaded; the message names its entry point or file."""


def _register(obj: object, origin: str) -> list[str]:
    items = obj if isinstance(obj, list | tuple) else [obj]
    names = []
    for item in items:
        if not isinstance(item, ModalityPlugin):
            raise PluginError(f"{origin}: expected a ModalityPlugin, got {type(item).__name__}")
        if item.name in MODALITIES and MODALITIES.get(item.name) is not item:
            raise PluginError(f"{origin}: modality {item.name!r} is already registered by another plugin")
        MODALITIES.register(item.name, item, replace=True)
        names.append(item.name)
    return names


def load_entry_points() -> None:
    """Register every plugin in the ``mmssl.modalities`` entry-point group (once per process).

    A plugin that fails to import is recorded in ``FAILED`` with a warning, so one broken third-party plugin
    does not stop the others; asking for it by name raises with the reason.
    """
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP})"
        try:
            _register(ep.load(), origin)
        except Exception as err:
            FAILED[ep.name] = f"{origin} failed to load: {type(err).__name__}: {err}"
            warnings.warn(FAILED[ep.name], RuntimeWarning, stacklevel=2)


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
    """Import a plugin file and register the ``plugin`` (or ``plugins``) it defines.

    Args:
        path: A ``.py`` file; relative paths are resolved against ``base`` (the recipe's folder).
        base: Folder of the recipe naming the file.

    Returns:
        The names of the modalities it registered.
    """
    file = plugin_file_path(path, base)
    if not file.is_file():
        raise PluginError(f"plugin file {path} not found (looked at {file})")
    module_name = "mmssl_user_plugin_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        module = sys.modules[module_name]
    else:
        spec = importlib.util.spec_from_file_location(module_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise PluginError(f"plugin file {file} failed to import: {err}") from err
    obj = getattr(module, "plugins", None) or getattr(module, "plugin", None)
    if obj is None:
        raise PluginError(f"plugin file {file} defines neither `plugin` nor `plugins`")
    return _register(obj, f"plugin file {file}")


def get_modality(name: str) -> ModalityPlugin:
    load_entry_points()
    if name not in MODALITIES and name in FAILED:
        raise PluginError(FAILED[name])
    return MODALITIES.get(name)


def all_modalities() -> list[ModalityPlugin]:
    load_entry_points()
    return [plugin for _, plugin in MODALITIES.items()]
