"""Two-view redundancy-reduction objectives on one modality: Barlow Twins and VICReg.

Both embed two random views of each row with the modality's encoder, map the pooled embeddings through an MLP
*expander* and regularise the statistics of the expanded embeddings over the (global) batch, so no negatives
and no teacher are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pydantic import Field
from torch import Tensor, nn

from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.noncontrastive import barlow_twins_loss, vicreg_loss
from mmssl.train.step import StepContext


def mlp_expander(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3) -> nn.Module:
    """The Barlow Twins / VICReg expander: ``layers - 1`` x (Linear-BN-ReLU), then a Linear without bias."""
    if layers < 1:
        raise ValueError(f"an expander needs at least 1 layer, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*mods)


class RedundancyOptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose two random views are compared.")
    views: tuple[str, str] = Field(("view0", "view1"), description="The two views.")
    proj_dim: int = Field(512, ge=2, description="Output width of the expander (the papers use 8192).")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the expander.")
    expander_layers: int = Field(3, ge=1, description="Linear layers of the expander.")
    gather: bool = Field(True, description="Batch statistics over all processes (gathered with gradient).")

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")]


class BarlowTwinsOptions(RedundancyOptions):
    lambda_offdiag: float = Field(5e-3, ge=0, description="Weight of the off-diagonal (redundancy) term.")


class VICRegOptions(RedundancyOptions):
    sim_weight: float = Field(25.0, ge=0, description="Weight of the invariance term (lambda).")
    var_weight: float = Field(25.0, ge=0, description="Weight of the variance term (mu).")
    cov_weight: float = Field(1.0, ge=0, description="Weight of the covariance term (nu).")
    eps: float = Field(1e-4, gt=0, description="Added to the variance before the square root.")


class TwoViewRedundancy(nn.Module):
    """An expander on the pooled encodings of two views (``inputs``), then a redundancy-reduction ``loss`` of the
    two expanded batches (``[B, proj_dim]`` each, float32) -> named terms."""

    partial_rows = False
    cacheable = True  # whole-batch statistics on the expander output, encoders only through the context

    def __init__(
        self, inputs: list[tuple[str, str]], expander: nn.Module, loss: Callable[[Tensor, Tensor], dict[str, Tensor]]
    ) -> None:
        super().__init__()
        self.inputs, self.expander, self.loss = inputs, expander, loss

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        za, zb = (self.expander(ctx.encode(m, v).pooled).float() for m, v in self.inputs)
        return self.loss(za, zb)


def _expander(options: RedundancyOptions, info: BuildInfo) -> nn.Module:
    return mlp_expander(
        info.pooled_width(options.modality), options.hidden_dim, options.proj_dim, options.expander_layers
    )


@register_objective("barlow_twins", BarlowTwinsOptions)
def build_barlow_twins(options: BarlowTwinsOptions, info: BuildInfo) -> nn.Module:
    loss = partial(barlow_twins_loss, lambda_offdiag=options.lambda_offdiag, gather=options.gather)
    return TwoViewRedundancy(options.inputs(), _expander(options, info), loss)


@register_objective("vicreg", VICRegOptions)
def build_vicreg(options: VICRegOptions, info: BuildInfo) -> nn.Module:
    o = options
    loss = partial(vicreg_loss, sim_weight=o.sim_weight, var_weight=o.var_weight, cov_weight=o.cov_weight, eps=o.eps)
    return TwoViewRedundancy(options.inputs(), _expander(options, info), partial(loss, gather=o.gather))
