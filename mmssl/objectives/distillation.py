"""Self-distillation objectives with an EMA teacher on one modality: BYOL and DINO.

The student is the modality's encoder (shared with every other objective) plus the objective's own heads; the
teacher is an :class:`~mmssl.objectives.teacher.EMATeacher` of the encoder and the heads, run without gradient
and updated after every optimizer step (the teacher's own ``after_optimizer_step``).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmssl.batch import LOCAL_PREFIX
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.batch_norm import GlobalBatchNorm1d
from mmssl.objectives.contrastive import mlp_projector
from mmssl.objectives.noncontrastive import byol_loss, dino_center_update, dino_loss
from mmssl.objectives.teacher import EMATeacher
from mmssl.train.step import StepContext


class TeacherOptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose random views are distilled.")
    momentum: float = Field(0.996, ge=0, le=1, description="EMA momentum of the teacher at the first step.")
    final_momentum: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step (cosine schedule).")

    @model_validator(mode="after")
    def _momentum_order(self) -> TeacherOptions:
        if self.momentum > self.final_momentum:
            raise ValueError(f"momentum {self.momentum} must not exceed final_momentum {self.final_momentum}")
        return self

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")]


# ---------------------------------------------------------------- BYOL


class BYOLOptions(TeacherOptions):
    views: tuple[str, str] = Field(("view0", "view1"), description="The two views.")
    proj_dim: int = Field(128, ge=1, description="Output width of the projector (BYOL: 256).")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the projector (BYOL: 4096).")
    predictor: bool = Field(True, description="Use the predictor MLP (without it BYOL collapses).")
    pred_hidden_dim: int = Field(512, ge=1, description="Hidden width of the predictor (BYOL: 4096).")

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]


class BYOL(nn.Module):
    """BYOL (Grill et al. 2020): the online network predicts the target network's projection of the other view.

    Online: encoder -> projector -> predictor; target: EMA encoder -> EMA projector. The loss is symmetric,
    ``L(view0 -> view1) + L(view1 -> view0)`` with ``L = 2 - 2 cos`` (the paper's sum of both directions).
    """

    partial_rows = False

    def __init__(
        self,
        modality: str,
        views: tuple[str, str],
        projector: nn.Module,
        predictor: nn.Module,
        teacher_momentum: tuple[float, float],
    ) -> None:
        super().__init__()
        self.modality, self.views = modality, views
        self.inputs = [(modality, v) for v in views]
        self.projector, self.predictor = projector, predictor
        base, final = teacher_momentum
        self.teacher = EMATeacher(
            {"projector": projector}, encoders={"encoder": modality}, base_momentum=base, final_momentum=final
        )

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        m = self.modality
        teacher_encoder = self.teacher.ensure("encoder", ctx.model.encoders[m])
        online = [self.predictor(self.projector(ctx.encode(m, v).pooled)).float() for v in self.views]
        with torch.no_grad():
            target = [self.teacher.projector(teacher_encoder(ctx.inputs(m, v)).pooled).float() for v in self.views]
        first, second = byol_loss(online[0], target[1]), byol_loss(online[1], target[0])
        return {
            "loss": first["loss"] + second["loss"],
            "cos": (first["cos"] + second["cos"]) / 2,
            "momentum": self.teacher.momentum.detach().clone(),
        }


@register_objective("byol", BYOLOptions)
def build_byol(options: BYOLOptions, info: BuildInfo) -> nn.Module:
    o = options
    projector = mlp_projector(info.pooled_width(o.modality), o.hidden_dim, o.proj_dim)
    predictor = mlp_projector(o.proj_dim, o.pred_hidden_dim, o.proj_dim) if o.predictor else nn.Identity()
    return BYOL(o.modality, o.views, projector, predictor, (o.momentum, o.final_momentum))


# ---------------------------------------------------------------- DINO


class DINOHead(nn.Module):
    """DINO's projection head: a GELU MLP to a bottleneck, L2 normalisation, weight-normalised prototypes.

    ``logits = normalize(mlp(x)) @ normalize(prototypes).T * g`` where ``g`` is fixed at 1 when
    ``norm_last_layer`` (the reference's weight norm with a frozen ``weight_g``) and learned otherwise. With
    ``batch_norm`` each hidden layer is Linear-BN-GELU (the reference's ``use_bn_in_head``, its ResNet setting;
    the statistics span every process).

    Shapes:
        x: ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        layers: int = 3,
        norm_last_layer: bool = True,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim)]
            mods += [GlobalBatchNorm1d(hidden_dim)] if batch_norm else []
            mods += [nn.GELU()]
            dim = hidden_dim
        mods.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.scale = None if norm_last_layer else nn.Parameter(torch.ones(out_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor, freeze_prototypes: bool = False) -> Tensor:
        """``freeze_prototypes``: the prototypes get a zero gradient (DINO freezes the last layer early on: it
        stabilises training); they still take part in the graph, as DDP needs."""
        x = nn.functional.normalize(self.mlp(x), dim=-1, eps=1e-6)
        prototypes = frozen(self.prototypes) if freeze_prototypes else self.prototypes
        logits = x @ nn.functional.normalize(prototypes, dim=-1).T.to(x.dtype)
        return logits if self.scale is None else logits * self.scale


def frozen(parameter: Tensor) -> Tensor:
    """``parameter`` without gradient, plus ``0 * parameter``: the same values, a zero gradient (not None, so DDP
    still sees the parameter used)."""
    return parameter.detach() + 0.0 * parameter


class DINOOptions(TeacherOptions):
    num_views: int = Field(
        2,
        ge=2,
        description="Random views view0..view{K-1}, all the same size (the plugin's augment); the teacher sees "
        "view0 and view1 (the global crops), the student sees all of them.",
    )
    local_views: int = Field(
        0,
        ge=0,
        description="Small local crops local0..local{L-1} (multi-crop; the plugin's augment_local) seen by the "
        "student only, matched to the teacher's distributions of the global views.",
    )
    freeze_last_layer_steps: int = Field(
        0, ge=0, description="Steps at the start during which the prototypes (the head's last layer) do not train."
    )
    out_dim: int = Field(1024, ge=2, description="Number of prototypes K (DINO: 65536; smaller for tiny models).")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the head MLP (DINO: 2048).")
    bottleneck_dim: int = Field(128, ge=1, description="Bottleneck width before the prototypes (DINO: 256).")
    head_layers: int = Field(3, ge=1, description="Linear layers of the head MLP.")
    norm_last_layer: bool = Field(True, description="Fix the prototypes' weight-norm scale at 1.")
    head_batch_norm: bool = Field(
        False, description="Batch norm after each hidden layer of the head (DINO's use_bn_in_head, for ResNets)."
    )
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0, description="Teacher temperature after warmup.")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="Teacher temperature at step 0.")
    warmup_teacher_temp_steps: int = Field(0, ge=0, description="Steps of linear teacher temperature warmup.")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the center of teacher outputs.")

    @property
    def views(self) -> list[str]:
        """Every view the student sees: the global ones (the teacher sees the first two), then the local crops."""
        return [f"view{i}" for i in range(self.num_views)] + [f"{LOCAL_PREFIX}{i}" for i in range(self.local_views)]

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")] + ([(self.modality, "local_views")] if self.local_views else [])


class DINO(nn.Module):
    """DINO (Caron et al. 2021): the student matches the centred, sharpened teacher distribution of other views.

    Multi-crop: ``num_views`` global random views (the plugin's ``augment``; the teacher sees the first two) and
    ``local_views`` small local crops (``augment_local``) that only the student sees. During the first
    ``freeze_last_layer_steps`` steps the prototypes get a zero gradient. The center
    (``[1, out_dim]``) is a buffer, updated with momentum 0.9 after each loss and
    checkpointed with the weights.
    """

    partial_rows = False

    def __init__(
        self,
        modality: str,
        views: list[str],
        head: DINOHead,
        student_temp: float,
        teacher_temp: tuple[float, float, int],
        center_momentum: float,
        teacher_momentum: tuple[float, float],
        freeze_last_layer_steps: int = 0,
    ) -> None:
        super().__init__()
        self.modality, self.views, self.head = modality, views, head
        self.inputs = [(modality, v) for v in views]
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_steps = teacher_temp
        base, final = teacher_momentum
        self.teacher = EMATeacher(
            {"head": head}, encoders={"encoder": modality}, base_momentum=base, final_momentum=final
        )
        self.register_buffer("center", torch.zeros(1, head.prototypes.shape[0]))

    def teacher_temperature(self) -> float:
        step, warmup = int(self.teacher.steps), self.warmup_teacher_temp_steps
        if step >= warmup:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / warmup

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        m = self.modality
        teacher_encoder = self.teacher.ensure("encoder", ctx.model.encoders[m])
        freeze = int(self.teacher.steps) < self.freeze_last_layer_steps
        student = [self.head(ctx.encode(m, v).pooled, freeze).float() for v in self.views]
        with torch.no_grad():
            teacher = [self.teacher.head(teacher_encoder(ctx.inputs(m, v)).pooled).float() for v in self.views[:2]]
        temp = self.teacher_temperature()
        terms = dino_loss(student, teacher, self.center, self.student_temp, temp)
        if self.training:
            self.center.copy_(dino_center_update(self.center, teacher, self.center_momentum))
        terms["teacher_temp"] = torch.tensor(temp)
        terms["momentum"] = self.teacher.momentum.detach().clone()
        return terms


@register_objective("dino", DINOOptions)
def build_dino(options: DINOOptions, info: BuildInfo) -> nn.Module:
    o = options
    head = DINOHead(
        info.pooled_width(o.modality),
        o.out_dim,
        o.hidden_dim,
        o.bottleneck_dim,
        o.head_layers,
        o.norm_last_layer,
        o.head_batch_norm,
    )
    temps = (o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_steps)
    momentum = (o.momentum, o.final_momentum)
    return DINO(
        o.modality, o.views, head, o.student_temp, temps, o.center_momentum, momentum, o.freeze_last_layer_steps
    )
