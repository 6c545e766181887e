"""Choosing the modality an export format writes, and the run-folder bits every exporter reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from mmssl.export.own_transformer import NotExportable

T = TypeVar("T")


def pick_modality(
    run: Any, modality: str | None, read: Callable[[nn.Module, str], T], fmt: str
) -> tuple[str, T]:
    """The modality whose encoder ``read`` accepts: ``modality`` when given, else the run's only such one.

    Raises:
        NotExportable: ``modality`` is not in the run or not exportable, or no / several modalities qualify.
    """
    encoders = run.model.encoders
    if modality is not None:
        if modality not in encoders:
            raise NotExportable(f"--modality {modality!r} is not in the run (has {sorted(encoders)})")
        return modality, read(encoders[modality], modality)
    found: dict[str, T] = {}
    reasons: list[str] = []
    for m, encoder in encoders.items():
        try:
            found[m] = read(encoder, m)
        except NotExportable as err:
            reasons.append(str(err))
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise NotExportable(f"{fmt} export: no modality of the run fits: " + "; ".join(reasons))
    raise NotExportable(f"{fmt} export: several modalities fit ({sorted(found)}); pick one with --modality")
