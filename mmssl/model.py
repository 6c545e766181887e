"""The joint-embedding model: one encoder per modality and a projection of each into one shared space."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.modality import EncoderOutput, ModalityBatch, pooled_width


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
            width = pooled_width(encoder)
            if m in identity:
                if width != embed_dim:
                    raise ValueError(
                        f"modalities.{m}.projection is identity, but the encoder's pooled width {width} is not "
                        f"model.embed_dim {embed_dim}"
                    )
                self.projections[m] = nn.Identity()
            else:
                self.projections[m] = nn.Linear(width, embed_dim, bias=False)
                nn.init.normal_(self.projections[m].weight, std=width**-0.5)
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
