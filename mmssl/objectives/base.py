"""How objectives plug into training: a registry of objective types and the per-step context they read.

An objective type has a pydantic options model and a builder. Its options say which inputs it reads
(``inputs``) and which capabilities it needs from each modality (``requirements``), so a recipe can be checked
before any compute. The built module's ``forward(ctx)`` returns named terms including ``loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmssl.data.dataset import CLEAN, Batch
from mmssl.modality import EncoderOutput, ModalityBatch, Processor
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
        """(modality, capability) pairs; capability is ``views``, ``pairing``, ``masking:continuous``, ..."""
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
    """

    widths: dict[str, int]
    embed_dim: int
    processors: dict[str, Processor]
    probes: dict[str, ModalityBatch] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectiveType:
    name: str
    options: type[ObjectiveOptions]
    build: Callable[[Any, BuildInfo], nn.Module]


OBJECTIVES: Registry[ObjectiveType] = Registry("objective")


def register_objective(name: str, options: type[ObjectiveOptions]) -> Callable[[Callable], Callable]:
    def wrap(build: Callable[[Any, BuildInfo], nn.Module]) -> Callable[[Any, BuildInfo], nn.Module]:
        OBJECTIVES.register(name, ObjectiveType(name, options, build))
        return build

    return wrap


class ModalityAbsent(KeyError):
    """The micro-batch holds no row of a modality (or view) an objective asked to encode."""


class StepContext:
    """One step's batch and model, with encodings shared between objectives.

    Two objectives that read the same (modality, view) see the same encoder pass, e.g. CLIP and SimCLR both
    reading the image ``view0``.

    Partially paired data: a micro-batch may hold no row of a modality at all (``has`` is False). No encoder can
    run on zero rows, so ``encode`` raises :class:`ModalityAbsent` then, while ``embed`` returns a zero-row
    ``[0, E]`` embedding that is still attached, with weight 0, to every parameter of the modality's encoder and
    projection (:meth:`participation`). Objectives that accept partial batches (CLIP, SigLIP: class attribute
    ``partial_rows = True``) read ``embed`` and stay in lock-step with the other processes: they make the same
    collectives with zero rows. ``TrainModule`` skips every other objective whose inputs are absent, on all
    processes at once.
    """

    def __init__(self, model: nn.Module, batch: Batch, processors: dict[str, Processor]) -> None:
        self.model, self.batch, self.processors = model, batch, processors
        self._encoded: dict[tuple[str, str], EncoderOutput] = {}
        self._embedded: dict[tuple[str, str], Tensor] = {}

    def has(self, modality: str, view: str = CLEAN) -> bool:
        """Whether the micro-batch holds at least one row of ``modality`` (in ``view``)."""
        return view in self.batch.inputs.get(modality, {})

    def inputs(self, modality: str, view: str = CLEAN) -> ModalityBatch:
        try:
            return self.batch.inputs[modality][view]
        except KeyError:
            if modality in self.batch.present and modality not in self.batch.inputs:
                raise ModalityAbsent(f"the micro-batch has no row with modality {modality!r}") from None
            raise KeyError(f"the batch has no {view!r} view of modality {modality!r}") from None

    def encode(self, modality: str, view: str = CLEAN) -> EncoderOutput:
        """The encoder's output on the rows that have ``modality``; :class:`ModalityAbsent` when there are none."""
        key = (modality, view)
        if key not in self._encoded:
            self._encoded[key] = self.model.encode(modality, self.inputs(modality, view))
        return self._encoded[key]

    def embed(self, modality: str, view: str = CLEAN) -> Tensor:
        """L2-normalised embedding in the shared space. Shapes: -> [B_m, E] (rows that have the modality).

        ``[0, E]`` when no row has the modality; it depends (with weight 0) on the modality's parameters, so a
        loss built on it gives them a (zero) gradient, as DDP needs every parameter to take part in every step.
        """
        key = (modality, view)
        if key not in self._embedded:
            if self.has(modality, view) or modality not in self.batch.present:
                self._embedded[key] = self.model.project(modality, self.encode(modality, view).pooled)
            else:
                anchor = self.participation(modality)
                self._embedded[key] = anchor.new_zeros(0, self.model.embed_dim) + anchor
        return self._embedded[key]

    def participation(self, *modalities: str) -> Tensor:
        """``0 * (sum of the parameters of the modalities' encoders and projections)``: a scalar 0 on whose graph
        every such parameter lies, so the backward pass gives each a zero gradient."""
        return self.model.participation(*modalities)

    def paired_rows(self, a: str, b: str) -> tuple[Tensor, Tensor]:
        """Positions, within each modality's own batch, of the rows that have both ``a`` and ``b``.

        Either may be empty (no row has both, or no row has one of them at all).

        Shapes: -> ([P], [P]) long indices into the [B_a] and [B_b] batches.
        """
        pa, pb = self.batch.present[a], self.batch.present[b]
        both = pa & pb
        return (pa.cumsum(0) - 1)[both], (pb.cumsum(0) - 1)[both]


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
