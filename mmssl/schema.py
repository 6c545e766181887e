"""What a pydantic options model tells a user: its keys with type, default and description, and the keys
allowed at a path (for unknown-key errors that name the close matches)."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class OptionInfo:
    """One key of an options model, as ``mmssl modalities --options`` prints it."""

    name: str
    type: str
    default: str
    description: str


def describe_options(model: type[BaseModel]) -> list[OptionInfo]:
    """Every field of ``model`` in declaration order: name, readable type, default (``required`` if none) and
    description (empty when the field has none)."""
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        if field.default is not PydanticUndefined:
            default = repr(field.default)
        elif field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "required"
        rows.append(OptionInfo(name, type_name(field.annotation), default, field.description or ""))
    return rows


def type_name(annotation: Any) -> str:
    """A short readable name: ``int``, ``list[float] | None``, ``'cls' | 'mean'``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The options model that holds the last key of ``loc`` (a pydantic error location), or None when the path
    leaves the models (a plain dict, an unknown key)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        current = _unwrap(current, part)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, part: Any) -> Any:
    """Step through Optional, list[X] (integer index) and dict[str, X] to the model inside, if any."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return models[0]
        containers = [a for a in args if typing.get_origin(a) in (list, dict)]
        return _unwrap(containers[0], part) if containers else None
    if origin is list and args and isinstance(part, int):
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return annotation


def unknown_key_message(key: str, allowed: list[str]) -> str:
    """``unknown key 'widht'; did you mean 'width'? allowed keys: a, b, ...``."""
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown key {key!r}{hint} (allowed keys: {', '.join(allowed)})"
