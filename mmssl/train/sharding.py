"""Sharded data parallelism: ``train.strategy: fsdp`` with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Every encoder block is its own FSDP unit (its parameters are gathered just before it runs and freed after), then
each encoder, EMA-teacher copies likewise, and finally the training module (projections, objective heads) as the
root. Parameters, gradients and AdamW state are sharded over the processes; the optimizer is built after
sharding, on the sharded parameters.

Accelerate (1.15) enables its FSDP plugin only for accelerator devices (its CPU path always falls back to DDP),
so mmssl calls ``fully_shard`` itself, with the same arguments Accelerate's FSDP2 path passes, and keeps
Accelerate for the process group, autocast and gradient scaling. One code path then runs on gloo CPUs (the
tests) and on GPUs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mmssl.encoders.adapt import layer_stack

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def materialise_teachers(train_module: nn.Module) -> None:
    """Make the lazily copied EMA-teacher encoders now, before sharding (a sharded module cannot be deep-copied).

    An ``EMATeacher`` copies the encoders it follows (name -> modality) on first use (BYOL, DINO, data2vec); this
    makes those copies from the unsharded encoders.
    """
    from mmssl.objectives.teacher import EMATeacher

    for module in train_module.objectives.modules():
        if isinstance(module, EMATeacher):
            for name, modality in module._encoders.items():
                module.ensure(name, train_module.model.encoders[modality])


def shard_units(train_module: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units, innermost first: each encoder's blocks, then the encoder, for the
    student encoders and the EMA-teacher encoders (the root is sharded last, separately)."""
    from mmssl.objectives.teacher import EMATeacher

    encoders = list(train_module.model.encoders.values())
    for module in train_module.objectives.modules():
        if isinstance(module, EMATeacher):
            encoders += [module._modules[name] for name in module._encoders if module._modules.get(name) is not None]
    units: list[nn.Module] = []
    for encoder in encoders:
        _, blocks = layer_stack(encoder)
        units += [b for b in blocks if any(True for _ in b.parameters())]
        units.append(encoder)
    return units


def shard(
    train_module: nn.Module,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
    param_dtype: str | None = None,
    reduce_dtype: str | None = None,
) -> nn.Module:
    """Apply FSDP2 to ``train_module`` in place (blocks, encoders, root) and return it.

    Args:
        train_module: The ``TrainModule`` on its device, in the default process group.
        reshard_after_forward: Free gathered parameters after each unit's forward (ZeRO-3) or keep them (ZeRO-2).
        cpu_offload: Keep sharded parameters, gradients and optimizer state on the CPU.
        param_dtype: Mixed-precision policy: dtype parameters are gathered in (``bfloat16``, ...); None keeps theirs.
        reduce_dtype: dtype of the gradient reduce-scatter; None follows ``param_dtype``.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    materialise_teachers(train_module)
    policy = MixedPrecisionPolicy(
        param_dtype=DTYPES[param_dtype] if param_dtype else None,
        reduce_dtype=DTYPES[reduce_dtype] if reduce_dtype else None,
    )
    kwargs = {
        "reshard_after_forward": reshard_after_forward,
        "mp_policy": policy,
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for unit in shard_units(train_module):
        if not is_sharded(unit):
            fully_shard(unit, **kwargs)
    scalars = {p for p in train_module.parameters() if p.dim() == 0}
    fully_shard(train_module, **{**kwargs, "reshard_after_forward": False}, ignored_params=scalars)
    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_average_gradient)
    return train_module


def _average_gradient(param: torch.Tensor) -> None:
    """Scalar parameters (temperatures, logit scales, biases) stay replicated, as ``fully_shard`` cannot shard a
    0-d tensor; their gradient is averaged over processes in the backward pass, as DDP would. Averaging again after
    a further accumulated micro-batch is harmless: the average of equal values is that value."""
    import torch.distributed as dist

    dist.all_reduce(param.grad)
    param.grad /= dist.get_world_size()


@contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP2: skip the gradient reduce-scatter of micro-batches before the last of an accumulation (the gradients
    stay unsharded and accumulate locally), as ``no_sync`` does for DDP."""
    if not is_sharded(module) or enabled:
        yield
        return
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
