"""How objectives plug into training: a registry of objective types, their options and what builders know.

An objective type has a pydantic options model and a builder. Its options say which inputs it reads
(``inputs``) and which capabilities it needs from each modality (``requirements``), so a recipe can be checked
before any compute. The builder turns the options into flat constructor arguments of a module that follows
:class:`mmssl.train.step.Objective`: its ``forward(ctx)`` returns named terms including ``loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmssl.modality import ModalityBatch, Processor
from mmssl.registry import Registry


class ObjectiveOptions(BaseModel):
    """Fields every objective has; subclasses add their own."""

    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = Field(1.0, ge=0, description="Weight of this objective's loss in the total.")

    def inputs(self) -> list[tuple[str, str]]:
        """(modality, view) pairs this objective reads."""
        raise NotImplementedError

    def requirements(self) -> list[tuple[str, str]]:
        """(modality, capability) pairs; capability is ``views``, ``local_views``, ``pairing``,
        ``masking:continuous``, ..."""
        return []

    def shared_space(self) -> list[str]:
        """Modalities whose projection into the shared embedding space this objective trains."""
        return []


@dataclass
class BuildInfo:
    """What a builder may know about the model it trains.

    Attributes:
        widths: modality -> encoder token width D.
        embed_dim: Width of the shared embedding space.
        processors: modality -> fitted processor.
        probes: modality -> a small prepared batch, to find target shapes.
        pooled_widths: modality -> width of the encoder's pooled output where it is not D (e.g. a ResNet with
            pyramid pooling); see ``pooled_width``.
    """

    widths: dict[str, int]
    embed_dim: int
    processors: dict[str, Processor]
    probes: dict[str, ModalityBatch] = field(default_factory=dict)
    pooled_widths: dict[str, int] = field(default_factory=dict)

    def pooled_width(self, modality: str) -> int:
        """Width of the modality's pooled embedding, which heads on ``EncoderOutput.pooled`` take as input."""
        return self.pooled_widths.get(modality, self.widths[modality])


@dataclass(frozen=True)
class ObjectiveType:
    name: str
    options: type[ObjectiveOptions]
    build: Callable[[Any, BuildInfo], nn.Module]


OBJECTIVES: Registry[ObjectiveType] = Registry("objective", group="mmssl.objectives", builtins=("mmssl.objectives",))


ObjectiveBuilder = Callable[[Any, BuildInfo], nn.Module]
"""``(options, build info) -> objective module`` (an :class:`mmssl.train.step.Objective`)."""


def register_objective(name: str, options: type[ObjectiveOptions]) -> Callable[[ObjectiveBuilder], ObjectiveBuilder]:
    """``@register_objective("name", OptionsModel)`` on a builder."""

    def wrap(build: ObjectiveBuilder) -> ObjectiveBuilder:
        OBJECTIVES.register(name, ObjectiveType(name, options, build))
        return build

    return wrap


def objective_requirements_error(
    spec: ObjectiveOptions, capabilities: dict[str, Any], plugins: dict[str, str], defined: set[str]
) -> list[str]:
    """Messages for each capability ``spec`` needs that its modalities lack.

    Args:
        spec: The objective's options.
        capabilities: modality -> ``Capabilities`` of the modalities whose plugin resolved.
        plugins: modality -> plugin name.
        defined: Every modality the recipe defines (a plugin that failed to resolve is reported elsewhere).
    """
    problems = []
    for modality, need in spec.requirements():
        if modality not in defined:
            problems.append(f"modality {modality!r} is not defined in `modalities` (defined: {sorted(defined)})")
            continue
        if modality not in capabilities:
            continue
        caps = capabilities[modality]
        kind, _, detail = need.partition(":")
        ok = {
            "views": caps.views,
            "pairing": caps.pairing,
            "local_views": getattr(caps, "local_views", False),
            "masking": caps.masking is not None and (not detail or caps.masking == detail),
        }.get(kind)
        if ok is None:
            raise ValueError(f"objective {spec.name!r} declares an unknown capability {need!r}")
        if not ok:
            problems.append(
                f"objective {spec.name!r} needs modality {modality!r} to offer {need.replace(':', ' ')}, but plugin "
                f"{plugins[modality]!r} offers: {caps.describe()}"
            )
    return problems
