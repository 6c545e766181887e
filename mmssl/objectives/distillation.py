"""Self-distillation objectives with an EMA teacher on one modality: BYOL and DINO.

The student is the modality's encoder (shared with every other objective) plus the objective's own heads; the
teacher is an :class:`~mmssl.objectives.teacher.EMATeacher` of the encoder and the heads, run without gradient
and updated after every optimizer step (``after_optimizer_step``).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmssl.objectives.base import BuildInfo, ObjectiveOptions, StepContext, register_objective
from mmssl.objectives.contrastive import mlp_projector
from mmssl.objectives.noncontrastive import byol_loss, dino_center_update, dino_loss
from mmssl.objectives.teacher import EMATeacher


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

    def __init__(self, options: BYOLOptions, width: int) -> None:
        super().__init__()
        self.options = options
        self.projector = mlp_projector(width, options.hidden_dim, options.proj_dim)
        self.predictor = (
            mlp_projector(options.proj_dim, options.pred_hidden_dim, options.proj_dim)
            if options.predictor
            else nn.Identity()
        )
        self.teacher = EMATeacher(
            {"projector": self.projector},
            lazy=["encoder"],
            base_momentum=options.momentum,
            final_momentum=options.final_momentum,
        )

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        o = self.options
        teacher_encoder = self.teacher.ensure("encoder", ctx.model.encoders[o.modality])
        online = [self.predictor(self.projector(ctx.encode(o.modality, v).pooled)).float() for v in o.views]
        with torch.no_grad():
            target = [
                self.teacher.projector(teacher_encoder(ctx.inputs(o.modality, v)).pooled).float() for v in o.views
            ]
        first, second = byol_loss(online[0], target[1]), byol_loss(online[1], target[0])
        return {
            "loss": first["loss"] + second["loss"],
            "cos": (first["cos"] + second["cos"]) / 2,
            "momentum": self.teacher.momentum.detach().clone(),
        }

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        students = {"encoder": model.encoders[self.options.modality], "projector": self.projector}
        self.teacher.update(students, self.teacher.schedule(step, total_steps))


@register_objective("byol", BYOLOptions)
def build_byol(options: BYOLOptions, info: BuildInfo) -> nn.Module:
    return BYOL(options, info.widths[options.modality])


# ---------------------------------------------------------------- DINO


class DINOHead(nn.Module):
    """DINO's projection head: a GELU MLP to a bottleneck, L2 normalisation, weight-normalised prototypes.

    ``logits = normalize(mlp(x)) @ normalize(prototypes).T * g`` where ``g`` is fixed at 1 when
    ``norm_last_layer`` (the reference's weight norm with a frozen ``weight_g``) and learned otherwise.

    Shapes:
        x: ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int = 3, norm_last_layer=True
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim), nn.GELU()]
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

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.normalize(self.mlp(x), dim=-1, eps=1e-6)
        logits = x @ nn.functional.normalize(self.prototypes, dim=-1).T.to(x.dtype)
        return logits if self.scale is None else logits * self.scale


class DINOOptions(TeacherOptions):
    num_views: int = Field(
        2,
        ge=2,
        description="Random views view0..view{K-1}, all the same size (the plugin's augment); the teacher sees "
        "view0 and view1 (the global crops), the student sees all of them.",
    )
    out_dim: int = Field(1024, ge=2, description="Number of prototypes K (DINO: 65536; smaller for tiny models).")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the head MLP (DINO: 2048).")
    bottleneck_dim: int = Field(128, ge=1, description="Bottleneck width before the prototypes (DINO: 256).")
    head_layers: int = Field(3, ge=1, description="Linear layers of the head MLP.")
    norm_last_layer: bool = Field(True, description="Fix the prototypes' weight-norm scale at 1.")
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0, description="Teacher temperature after warmup.")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="Teacher temperature at step 0.")
    warmup_teacher_temp_steps: int = Field(0, ge=0, description="Steps of linear teacher temperature warmup.")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the center of teacher outputs.")

    @property
    def views(self) -> list[str]:
        return [f"view{i}" for i in range(self.num_views)]

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]


class DINO(nn.Module):
    """DINO (Caron et al. 2021): the student matches the centred, sharpened teacher distribution of other views.

    Multi-crop is reduced to ``num_views`` same-size random views (the plugin's ``augment``); the teacher sees
    the first two. The center (``[1, out_dim]``) is a buffer, updated with momentum 0.9 after each loss and
    checkpointed with the weights.
    """

    def __init__(self, options: DINOOptions, width: int) -> None:
        super().__init__()
        o = self.options = options
        self.head = DINOHead(width, o.out_dim, o.hidden_dim, o.bottleneck_dim, o.head_layers, o.norm_last_layer)
        self.teacher = EMATeacher(
            {"head": self.head}, lazy=["encoder"], base_momentum=o.momentum, final_momentum=o.final_momentum
        )
        self.register_buffer("center", torch.zeros(1, o.out_dim))

    def teacher_temperature(self) -> float:
        o, step = self.options, int(self.teacher.steps)
        if step >= o.warmup_teacher_temp_steps:
            return o.teacher_temp
        return o.warmup_teacher_temp + (o.teacher_temp - o.warmup_teacher_temp) * step / o.warmup_teacher_temp_steps

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        o = self.options
        teacher_encoder = self.teacher.ensure("encoder", ctx.model.encoders[o.modality])
        student = [self.head(ctx.encode(o.modality, v).pooled).float() for v in o.views]
        with torch.no_grad():
            teacher = [
                self.teacher.head(teacher_encoder(ctx.inputs(o.modality, v)).pooled).float() for v in o.views[:2]
            ]
        temp = self.teacher_temperature()
        terms = dino_loss(student, teacher, self.center, o.student_temp, temp)
        if self.training:
            self.center.copy_(dino_center_update(self.center, teacher, o.center_momentum))
        terms["teacher_temp"] = torch.tensor(temp)
        terms["momentum"] = self.teacher.momentum.detach().clone()
        return terms

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        students = {"encoder": model.encoders[self.options.modality], "head": self.head}
        self.teacher.update(students, self.teacher.schedule(step, total_steps))


@register_objective("dino", DINOOptions)
def build_dino(options: DINOOptions, info: BuildInfo) -> nn.Module:
    return DINO(options, info.widths[options.modality])
