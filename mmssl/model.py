"""The joint-embedding model: one encoder per modality and a projection of each into one shared space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.data.dataset import Batch
from mmssl.modality import EncoderOutput, ModalityBatch, Processor
from mmssl.objectives.base import StepContext


class JointEmbeddingModel(nn.Module):
    """Encoders plus linear projections into a shared, L2-normalised embedding space.

    Args:
        encoders: modality -> encoder module (``ModalityBatch -> EncoderOutput``) with a ``width`` attribute.
        embed_dim: Width E of the shared space.
    """

    def __init__(self, encoders: dict[str, nn.Module], embed_dim: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict({m: nn.Linear(e.width, embed_dim, bias=False) for m, e in encoders.items()})
        self.embed_dim = embed_dim
        for proj in self.projections.values():
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        return self.encoders[modality](batch)

    def project(self, modality: str, pooled: Tensor) -> Tensor:
        """Shapes: pooled [B, D] -> [B, E], unit norm."""
        return F.normalize(self.projections[modality](pooled), dim=-1)

    def embed(self, modality: str, batch: ModalityBatch) -> Tensor:
        return self.project(modality, self.encode(modality, batch).pooled)


class TrainModule(nn.Module):
    """The model and its objectives, as one module so DDP and the optimizer see every trained parameter.

    ``forward`` runs every objective on one batch and returns their named terms, prefixed with the objective's
    label, plus ``loss``: the weighted sum.
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
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        for label, objective in self.objectives.items():
            out = objective(ctx)
            weighted = self.weights[label] * out["loss"]
            total = weighted if total is None else total + weighted
            terms.update({f"{label}/{k}": v for k, v in out.items()})
        assert total is not None
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Let objectives with state outside the optimizer (e.g. an EMA teacher) update after each step.

        An objective opts in by defining ``after_optimizer_step(model, step, total_steps)``.
        """
        for objective in self.objectives.values():
            hook = getattr(objective, "after_optimizer_step", None)
            if hook is not None:
                hook(self.model, step, total_steps)
