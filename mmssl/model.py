"""The joint-embedding model: one encoder per modality and a projection of each into one shared space."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.data.dataset import Batch
from mmssl.modality import EncoderOutput, ModalityBatch, Processor
from mmssl.objectives.base import StepContext
from mmssl.objectives.distributed import world_size


class JointEmbeddingModel(nn.Module):
    """Encoders plus linear projections into a shared, L2-normalised embedding space.

    Args:
        encoders: modality -> encoder module (``ModalityBatch -> EncoderOutput``) with a ``width`` attribute.
        embed_dim: Width E of the shared space.
        identity: Modalities whose encoder already ends in the shared space (no projection; width must be E).
    """

    def __init__(
        self, encoders: dict[str, nn.Module], embed_dim: int, identity: frozenset[str] | set[str] = frozenset()
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict()
        for m, encoder in encoders.items():
            if m in identity:
                if encoder.width != embed_dim:
                    raise ValueError(
                        f"modalities.{m}.projection is identity, but the encoder width {encoder.width} is not "
                        f"model.embed_dim {embed_dim}"
                    )
                self.projections[m] = nn.Identity()
            else:
                self.projections[m] = nn.Linear(encoder.width, embed_dim, bias=False)
                nn.init.normal_(self.projections[m].weight, std=encoder.width**-0.5)
        self.embed_dim = embed_dim

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        return self.encoders[modality](batch)

    def project(self, modality: str, pooled: Tensor) -> Tensor:
        """Shapes: pooled [B, D] -> [B, E], unit norm."""
        return F.normalize(self.projections[modality](pooled), dim=-1)

    def embed(self, modality: str, batch: ModalityBatch) -> Tensor:
        return self.project(modality, self.encode(modality, batch).pooled)

    def participation(self, *modalities: str) -> Tensor:
        """``0 * (sum of the trainable parameters of the modalities' encoders and projections)``.

        A loss plus this term is unchanged, but the backward pass reaches each of these parameters (with a zero
        gradient). DDP needs that when a micro-batch holds no row of a modality: no encoder pass is possible then,
        yet every process must mark the same parameters as used.

        Shapes: -> [] (0.0).
        """
        return zero_touching(
            p for m in modalities for module in (self.encoders[m], self.projections[m]) for p in module.parameters()
        )


def zero_touching(parameters: Iterable[Tensor]) -> Tensor:
    """``0 * sum`` of the trainable ``parameters``: a scalar 0 whose backward gives each a zero gradient."""
    sums = [p.sum() for p in parameters if p.requires_grad]
    return torch.stack(sums).sum() * 0.0 if sums else torch.zeros(())


class TrainModule(nn.Module):
    """The model and its objectives, as one module so DDP and the optimizer see every trained parameter.

    ``forward`` runs every objective on one batch and returns their named terms, prefixed with the objective's
    label, plus ``loss``: the weighted sum.

    Partially paired data (a row may lack modalities): an objective that accepts partial batches
    (``partial_rows = True``: CLIP, SigLIP) always runs, also with zero rows, so that its collectives stay in
    lock-step across processes. Any other objective is skipped in a step where some process has no row of one of
    its inputs (decided on all processes together); it then adds ``0 * (its parameters and those of its
    modalities)`` to the loss, so DDP still sees every parameter used, and logs no terms for that step.
    """

    def __init__(
        self,
        model: JointEmbeddingModel,
        objectives: dict[str, nn.Module],
        weights: dict[str, float],
        processors: dict[str, Processor],
    ) -> None:
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.weights = weights
        self.processors = processors

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        ctx = StepContext(self.model, batch, self.processors)
        skipped = self.skipped_objectives(ctx)
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        for label, objective in self.objectives.items():
            if label in skipped:
                modalities = sorted({m for m, _ in _inputs(objective)})
                idle = zero_touching(objective.parameters()) + self.model.participation(*modalities)
                total = idle if total is None else total + idle
                continue
            out = objective(ctx)
            weighted = self.weights[label] * out["loss"]
            total = weighted if total is None else total + weighted
            terms.update({f"{label}/{k}": v for k, v in out.items()})
        assert total is not None
        terms["loss"] = total
        return terms

    def skipped_objectives(self, ctx: StepContext) -> set[str]:
        """Labels of the objectives without partial-batch support that cannot run on this micro-batch: one of
        their (modality, view) inputs has no row here or on another process (one all-reduce when distributed)."""
        needs = {
            label: _inputs(objective)
            for label, objective in self.objectives.items()
            if not getattr(objective, "partial_rows", False)
        }
        keys = sorted({key for inputs in needs.values() for key in inputs})
        if not keys:
            return set()
        have = [ctx.has(m, v) for m, v in keys]
        if world_size() > 1:
            flags = torch.tensor(have, dtype=torch.int32, device=ctx.batch.index.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            have = [bool(f) for f in flags.tolist()]
        absent = {key for key, ok in zip(keys, have, strict=True) if not ok}
        return {label for label, inputs in needs.items() if absent.intersection(inputs)}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Let objectives with state outside the optimizer (e.g. an EMA teacher) update after each step.

        An objective opts in by defining ``after_optimizer_step(model, step, total_steps)``.
        """
        for objective in self.objectives.values():
            hook = getattr(objective, "after_optimizer_step", None)
            if hook is not None:
                hook(self.model, step, total_steps)


def _inputs(objective: nn.Module) -> list[tuple[str, str]]:
    """The (modality, view) pairs an objective reads, from its options (none when it has no options)."""
    options = getattr(objective, "options", None)
    return list(options.inputs()) if options is not None and hasattr(options, "inputs") else []
