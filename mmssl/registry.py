"""Name -> component registries, and the one route every kind of component takes into them.

Every kind (modalities, objectives, data sources, evaluations, encoder libraries, export formats) has one
:class:`Registry`, filled the same three ways:

1. the package that ships the built-ins lists them in its own ``__init__`` (importing a module registers what
   its decorators name); the registry imports that package on first use;
2. an entry-point group per kind (``mmssl.modalities``, ``mmssl.objectives``, ``mmssl.sources``,
   ``mmssl.evaluations``, ``mmssl.encoder_libraries``, ``mmssl.export_formats``): an entry point names a module
   (its import registers through the decorators) or an object with a ``name`` (registered under it);
3. a recipe's ``plugins: [file.py]``, whose import may register any kind (:mod:`mmssl.plugins`).
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Generic, TypeVar

T = TypeVar("T")

REGISTRIES: list[Registry[object]] = []
"""Every registry, in the order they were made (a plugin file that registers nothing in any of them is refused)."""


def normalize_name(name: str) -> str:
    """Lower-case a name and drop separators so ``Sim-CLR`` and ``simclr`` match."""
    return re.sub(r"[\s_\-]", "", name.lower())


class RegistryError(KeyError):
    """Raised for duplicate or unknown registry names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping of normalised names to registered objects.

    Registering a name twice raises, and looking up an unknown name lists the valid ones. The first lookup
    imports the built-in package and loads the entry-point group.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"modality"``).
        group: Entry-point group third-party packages register through (e.g. ``"mmssl.objectives"``).
        builtins: Modules whose import registers the built-ins (e.g. ``"mmssl.objectives"``).
    """

    def __init__(self, kind: str, group: str | None = None, builtins: tuple[str, ...] = ()) -> None:
        self.kind, self.group, self.builtins = kind, group, builtins
        self._items: dict[str, T] = {}
        self._names: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        """Entry points that failed to load: name -> reason. Reported, not fatal, unless asked for by name."""
        self._loaded = False
        REGISTRIES.append(self)  # type: ignore[arg-type]

    def register(self, name: str, item: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """Register ``item`` under ``name``; without ``item`` returns a decorator."""

        def add(obj: T) -> T:
            key = normalize_name(name)
            if key in self._items and not replace and self._items[key] is not obj:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            self._names[key] = name
            return obj

        return add if item is None else add(item)

    def load(self) -> None:
        """Import the built-ins and load the entry-point group (once per process)."""
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtins:
            importlib.import_module(module)
        if self.group is None:
            return
        for ep in entry_points(group=self.group):
            origin = f"entry point {ep.name} = {ep.value} ({self.group})"
            try:
                self.add(ep.load(), origin)
            except Exception as err:
                self.failed[ep.name] = f"{origin} failed to load: {type(err).__name__}: {err}"
                warnings.warn(self.failed[ep.name], RuntimeWarning, stacklevel=2)

    def add(self, obj: object, origin: str) -> list[str]:
        """Register what an entry point or plugin file hands over: a module (its import registered its items), an
        object with a ``name``, or a list of such objects. Returns the names registered here."""
        if isinstance(obj, ModuleType):
            return []
        names = []
        for item in obj if isinstance(obj, list | tuple) else [obj]:
            name = getattr(item, "name", None)
            if not isinstance(name, str):
                raise RegistryError(f"{origin}: expected a {self.kind} with a `name`, got {type(item).__name__}")
            if name in self and self.get(name) is not item:
                raise RegistryError(f"{origin}: {self.kind} {name!r} is already registered by another package")
            self.register(name, item, replace=True)  # type: ignore[arg-type]
            names.append(name)
        return names

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` or raise listing the valid names."""
        self.load()
        key = normalize_name(name)
        if key not in self._items:
            if name in self.failed:
                raise RegistryError(self.failed[name])
            valid = ", ".join(sorted(self._names.values())) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid choices: {valid}")
        return self._items[key]

    def resolve(self, name_or_obj: str | T) -> T:
        """Accept a registered name or the object itself."""
        return self.get(name_or_obj) if isinstance(name_or_obj, str) else name_or_obj

    def __contains__(self, name: object) -> bool:
        self.load()
        return isinstance(name, str) and normalize_name(name) in self._items

    def names(self) -> list[str]:
        self.load()
        return sorted(self._names.values())

    def items(self) -> Iterator[tuple[str, T]]:
        self.load()
        for key in sorted(self._items, key=lambda k: self._names[k]):
            yield self._names[key], self._items[key]

    def __len__(self) -> int:
        self.load()
        return len(self._items)
