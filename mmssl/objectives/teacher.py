"""An exponential-moving-average (EMA) teacher for self-distillation objectives (BYOL, DINO, data2vec).

The teacher is a frozen deep copy of student modules, updated after every optimizer step as
``theta_teacher <- m * theta_teacher + (1 - m) * theta_student`` with a momentum ``m`` that follows BYOL's
cosine schedule from ``base_momentum`` to ``final_momentum`` (:func:`ema_momentum`). Buffers (e.g. BatchNorm
running statistics) are copied from the student.

The teacher is a submodule of its objective, so its weights are part of the training module's state dict:
they go into every checkpoint's ``model.safetensors`` and are restored on resume. Objectives are built before
they see the model, so a copy of the *encoder* is made on first use (``ensure``); a checkpoint loaded before
that first use is kept aside and loaded into the copy the moment it is made, so resuming restores the
teacher exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmssl.objectives.noncontrastive import ema_momentum


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad_(False)`` on every parameter."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t <- m * t + (1 - m) * s`` for every parameter; buffers are copied from the student.

    The two modules must have the same structure (names and shapes of parameters and buffers).
    """
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student parameters differ; the teacher must be a copy of the student")
    for name, t in t_params.items():
        t.mul_(momentum).add_(s_params[name].detach().to(t.dtype), alpha=1.0 - momentum)
    s_buffers = dict(student.named_buffers())
    for name, t in teacher.named_buffers():
        if name in s_buffers:
            t.copy_(s_buffers[name])


class EMATeacher(nn.Module):
    """Frozen EMA copies of student modules, held as named submodules.

    In ``train()`` mode the teacher's dropout is off (it runs like ``eval()``) while its BatchNorm layers use
    batch statistics, as BYOL's target network does; in ``eval()`` mode everything is in eval mode. Call its
    submodules under ``torch.no_grad()``.

    It is the one after-step hook of BYOL, DINO and data2vec: :meth:`after_optimizer_step` (which the training step
    calls on every objective's submodules that have one, :class:`mmssl.train.step.AfterStep`) updates each copy
    from its student with the scheduled momentum.

    Args:
        students: name -> student module to copy now (heads the objective builds itself); each copy follows it.
        encoders: name -> modality whose encoder is copied on first use (:meth:`ensure`) and followed.
        base_momentum: Momentum of the first update (BYOL and DINO: 0.996).
        final_momentum: Momentum reached at the last step (1.0).

    Attributes:
        momentum: Buffer, the momentum of the latest update (for logging).
        steps: Buffer, the number of updates so far (for schedules that depend on the step, e.g. DINO's
            teacher temperature warmup); checkpointed with the weights.
    """

    def __init__(
        self,
        students: dict[str, nn.Module] | None = None,
        encoders: dict[str, str] | None = None,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(f"need 0 <= base_momentum <= final_momentum <= 1, got {base_momentum}, {final_momentum}")
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        for name, module in (students or {}).items():
            self.add_module(name, frozen_copy(module))
        # The students themselves are not submodules here (their owner registers them); a plain dict keeps them.
        self._students: dict[str, nn.Module] = dict(students or {})
        self._encoders: dict[str, str] = dict(encoders or {})
        for name in self._encoders:
            self.register_module(name, None)
        self._pending: dict[str, dict[str, Tensor]] = {}
        self.register_buffer("momentum", torch.tensor(float(base_momentum)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.train()

    def ensure(self, name: str, student: nn.Module) -> nn.Module:
        """The teacher copy ``name``, made from ``student`` on first use (with any checkpointed weights)."""
        if name not in self._modules:
            raise KeyError(f"the teacher has no module {name!r} (has {list(self._modules)})")
        if self._modules[name] is None:
            twin = frozen_copy(student)
            pending = self._pending.pop(name, None)
            if pending is not None:
                twin.load_state_dict(pending)
            self._modules[name] = twin
            self.train(self.training)
        return self._modules[name]

    def schedule(self, step: int, total_steps: int) -> float:
        """Momentum of the update after 1-based optimizer step ``step`` of ``total_steps``."""
        return ema_momentum(step - 1, total_steps, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module], momentum: float) -> None:
        """EMA-update each teacher module from its student (name -> student module)."""
        for name, student in students.items():
            ema_update(self.ensure(name, student), student, momentum)
        self.momentum.fill_(momentum)
        self.steps += 1

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Follow the students after optimizer step ``step`` of ``total_steps`` (``model``: the joint model)."""
        students = self._students | {name: model.encoders[m] for name, m in self._encoders.items()}
        self.update(students, self.schedule(step, total_steps))

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(False)
        self.training = mode
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.train(mode)
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Copies not made yet keep their checkpointed weights aside until ``ensure`` makes them.
        for name, module in self._modules.items():
            if module is None:
                head = f"{prefix}{name}."
                found = {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}
                if found:
                    self._pending[name] = found
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
