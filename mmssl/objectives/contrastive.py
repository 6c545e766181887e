"""Two-view contrastive objectives on one modality (SimCLR's NT-Xent; SimCSE for text)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.batch_norm import GlobalBatchNorm1d
from mmssl.objectives.functional import info_nce
from mmssl.objectives.matryoshka import matryoshka_loss, nested_widths
from mmssl.train.step import StepContext


def mlp_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """SimCLR's projection head: Linear-BN-ReLU-Linear, the batch norm over the global batch (all processes)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), GlobalBatchNorm1d(hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
    )


class SimCLROptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose two random views are contrasted.")
    views: tuple[str, str] = Field(("view0", "view1"), description="The two views to contrast.")
    temperature: float = Field(0.1, gt=0)
    proj_dim: int = Field(128, ge=1, description="Output width of the projection head.")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the projection head.")
    gather: bool = Field(True, description="Use negatives from all processes (gathered with gradient).")
    matryoshka: list[int] = Field(
        default_factory=list,
        description="Nested widths of the projection head's output: the loss is averaged over these prefixes and "
        "the full proj_dim (Matryoshka).",
    )

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")]


class SimCLR(nn.Module):
    """NT-Xent between the projected pooled encodings of two views (``inputs``) of one modality."""

    partial_rows = False
    cacheable = True  # reads the encoders only through the step context (GradCache)

    def __init__(
        self,
        inputs: list[tuple[str, str]],
        projector: nn.Module,
        temperature: float,
        gather: bool,
        matryoshka: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.inputs, self.temperature, self.gather = inputs, temperature, gather
        self.widths = list(matryoshka or [])
        self.projector = projector

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        za, zb = (self.projector(ctx.encode(m, v).pooled) for m, v in self.inputs)
        return matryoshka_loss(lambda a, b: info_nce(a, b, self.temperature, gather=self.gather), za, zb, self.widths)


@register_objective("simclr", SimCLROptions)
def build_simclr(options: SimCLROptions, info: BuildInfo) -> nn.Module:
    nested_widths(options.matryoshka, options.proj_dim)  # fail at build, not at the first step
    projector = mlp_projector(info.pooled_width(options.modality), options.hidden_dim, options.proj_dim)
    return SimCLR(options.inputs(), projector, options.temperature, options.gather, options.matryoshka)
