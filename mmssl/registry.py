"""Name -> builder registries for modalities, objectives, data sources and evaluators."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Lower-case a name and drop separators so ``Sim-CLR`` and ``simclr`` match."""
    return re.sub(r"[\s_\-]", "", name.lower())


class RegistryError(KeyError):
    """Raised for duplicate or unknown registry names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping of normalised names to registered objects.

    Registering a name twice raises, and looking up an unknown name lists the valid ones.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"modality"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._names: dict[str, str] = {}

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

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` or raise listing the valid names."""
        key = normalize_name(name)
        if key not in self._items:
            valid = ", ".join(sorted(self._names.values())) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid choices: {valid}")
        return self._items[key]

    def resolve(self, name_or_obj: str | T) -> T:
        """Accept a registered name or the object itself."""
        return self.get(name_or_obj) if isinstance(name_or_obj, str) else name_or_obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._items

    def names(self) -> list[str]:
        return sorted(self._names.values())

    def items(self) -> Iterator[tuple[str, T]]:
        for key in sorted(self._items, key=lambda k: self._names[k]):
            yield self._names[key], self._items[key]

    def __len__(self) -> int:
        return len(self._items)
