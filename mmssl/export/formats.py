"""The registry of export formats: a run folder written out as files another library loads without mmssl."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmssl.registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    """An export format (``mmssl export --format NAME``).

    Attributes:
        name: Registry name (``safetensors``, ``hf``, ``open_clip``, ...).
        write: ``(run_dir, output[, modality]) -> folder written``.
        per_modality: ``write`` takes a ``modality`` (``--modality``), for formats that hold one encoder.
    """

    name: str
    write: Callable[..., Path]
    per_modality: bool = False


EXPORT_FORMATS: Registry[ExportFormat] = Registry(
    "export format", group="mmssl.export_formats", builtins=("mmssl.export",)
)


def register_export_format(
    name: str, per_modality: bool = False
) -> Callable[[Callable[..., Path]], Callable[..., Path]]:
    """``@register_export_format("name")`` on a ``(run_dir, output[, modality]) -> Path`` writer."""

    def wrap(write: Callable[..., Path]) -> Callable[..., Path]:
        EXPORT_FORMATS.register(name, ExportFormat(name, write, per_modality))
        return write

    return wrap
