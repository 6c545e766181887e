"""Cached large-batch contrastive training (GradCache, Gao et al. 2021): ``train.contrastive_chunk``.

A contrastive loss scores every row against every other row of the (gathered) batch, so it cannot be split into
micro-batches the way a per-row loss can. GradCache splits the *encoders* instead:

1. every encoder input an objective reads through ``StepContext.encode`` / ``embed`` is encoded in chunks of
   ``chunk`` rows without a graph (the RNG state before each chunk is kept);
2. the objectives run once on the whole micro-batch, on the concatenated outputs held as leaf tensors; their
   backward pass fills the gradients of the heads, projections and temperatures, and the gradient of the loss
   with respect to every cached encoder output (through the gather with gradient when ``gather`` is on);
3. each chunk is encoded again, with a graph and its RNG state restored (dropout and in-model augmentation
   replay identically), and backpropagated with that cached gradient: ``d loss / d theta = sum over chunks of
   (d out_chunk / d theta)^T g_chunk``.

Peak activation memory then follows the chunk, not the batch, and the result equals the full-batch step.

What can be cached: objectives with ``cacheable = True`` (CLIP, SigLIP, SimCLR, Barlow Twins, VICReg) read the
encoders only through the step context; their heads (SimCLR's batch-norm projector included) and whole-batch
statistics run in step 2 on the whole micro-batch. What cannot: an *encoder* with batch-norm layers (its
statistics would be those of a chunk: refused with a message), and objectives that run the encoder themselves on
masked inputs (MAE, MLM, data2vec): they run unchunked in step 2, exactly, without the memory saving (per-row
losses shrink with ``train.grad_accum`` instead).

Across processes, every backward pass runs without DDP's gradient hooks and :func:`sync_gradients` averages the
gradients once per optimizer step, which is what DDP would have done.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmssl.batch import Batch
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.objectives.distributed import world_size
from mmssl.train.checkpoint import rng_state, set_rng_state

Key = tuple[str, str]


def cached_inputs(objectives: dict[str, nn.Module]) -> list[Key]:
    """The (modality, view) inputs of the cacheable objectives, in first-use order."""
    keys: list[Key] = []
    for objective in objectives.values():
        if getattr(objective, "cacheable", False):
            keys += [tuple(key) for key in objective.inputs if tuple(key) not in keys]
    return keys


def check_cacheable(encoders: dict[str, nn.Module], keys: list[Key]) -> None:
    """Raise when an encoder read by a cached objective has batch-norm layers (chunk statistics differ)."""
    for modality in sorted({m for m, _ in keys}):
        if any(isinstance(layer, _BatchNorm) for layer in encoders[modality].modules()):
            raise ValueError(
                f"train.contrastive_chunk: the encoder of modality {modality!r} has batch-norm layers, whose "
                "statistics depend on which rows are encoded together, so a chunked step would differ from the "
                "full batch; use a layer-norm encoder or drop contrastive_chunk"
            )


def slice_rows(value: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a batch value: a tensor, a dict of them, or a torch_geometric ``Batch``."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: slice_rows(v, start, stop) for k, v in value.items()}
    if hasattr(value, "index_select") and hasattr(value, "num_graphs"):
        return type(value).from_data_list(value.index_select(slice(start, stop)))
    return value[start:stop]


def chunk_batch(batch: ModalityBatch, start: int, stop: int) -> ModalityBatch:
    return ModalityBatch(
        slice_rows(batch.data, start, stop),
        slice_rows(batch.padding_mask, start, stop),
        slice_rows(batch.keep, start, stop),
    )


def concat_outputs(outputs: list[EncoderOutput]) -> EncoderOutput:
    """Concatenate chunk outputs along rows, padding tokens to the longest chunk (marked as padding).

    Shapes: chunks' tokens [b_i, N_i, D], pooled [b_i, D] -> tokens [B, max N_i, D], pooled [B, D].
    """
    longest = max(o.tokens.shape[1] for o in outputs)
    tokens, masks = [], []
    any_mask = any(o.padding_mask is not None for o in outputs) or any(o.tokens.shape[1] < longest for o in outputs)
    for o in outputs:
        pad = longest - o.tokens.shape[1]
        tokens.append(F.pad(o.tokens, (0, 0, 0, pad)) if pad else o.tokens)
        if any_mask:
            mask = (
                o.padding_mask
                if o.padding_mask is not None
                else o.tokens.new_zeros(o.tokens.shape[:2], dtype=torch.bool)
            )
            masks.append(F.pad(mask, (0, pad), value=True) if pad else mask)
    return EncoderOutput(
        tokens=torch.cat(tokens),
        pooled=torch.cat([o.pooled for o in outputs]),
        padding_mask=torch.cat(masks) if masks else None,
    )


class GradCache:
    """One micro-batch of the GradCache step (see the module docstring).

    Args:
        chunk: Rows per encoder chunk.
        autocast: Context for every forward pass (``accelerator.autocast``), as the wrapped module's forward gets.
        backward: Runs the backward pass of a scalar (``accelerator.backward``, which also scales fp16 losses).
    """

    def __init__(
        self, chunk: int, autocast: Callable[[], AbstractContextManager], backward: Callable[[Tensor], None]
    ) -> None:
        self.chunk, self.autocast, self.backward = chunk, autocast, backward

    def step(self, module: nn.Module, inner: nn.Module, batch: Batch, scale: float) -> dict[str, Tensor]:
        """Forward and backward of ``scale * loss`` on ``batch``; returns the (detached) terms.

        Args:
            module: The training module as prepared (DDP-wrapped or not); the loss pass goes through it.
            inner: The unwrapped ``TrainModule``; chunks go straight to its encoders (no DDP hooks).
            batch: The micro-batch.
            scale: Factor of the loss (1 / grad_accum).
        """
        keys = [k for k in cached_inputs(inner.objectives) if k[1] in batch.inputs.get(k[0], {})]
        states: dict[Key, list[tuple[int, int, dict[str, Any]]]] = {}
        leaves: dict[Key, EncoderOutput] = {}
        for modality, view in keys:
            rows = batch.inputs[modality][view]
            spans, outputs = [], []
            for start in range(0, len(rows), self.chunk):
                stop = min(start + self.chunk, len(rows))
                spans.append((start, stop, rng_state()))
                with torch.no_grad(), self.autocast():
                    outputs.append(inner.model.encode(modality, chunk_batch(rows, start, stop)))
            states[(modality, view)] = spans
            out = concat_outputs(outputs)
            leaves[(modality, view)] = EncoderOutput(
                out.tokens.detach().requires_grad_(), out.pooled.detach().requires_grad_(), out.padding_mask
            )
        terms = module(batch, encoded=leaves)
        self.backward(terms["loss"] * scale)
        after = rng_state()
        for key, spans in states.items():
            leaf = leaves[key]
            if leaf.pooled.grad is None and leaf.tokens.grad is None:
                continue
            for start, stop, state in spans:
                set_rng_state(state)
                with self.autocast():
                    out = inner.model.encode(key[0], chunk_batch(batch.inputs[key[0]][key[1]], start, stop))
                surrogate = out.pooled.new_zeros(())
                for produced, cached in ((out.pooled, leaf.pooled), (out.tokens, leaf.tokens)):
                    if cached.grad is not None:
                        grad = (
                            cached.grad[start:stop, : produced.shape[1]]
                            if produced.dim() > 2
                            else cached.grad[start:stop]
                        )
                        surrogate = surrogate + (produced * grad.to(produced.dtype)).sum()
                surrogate.backward()  # the cached gradients already carry the loss scale
        set_rng_state(after)
        return {k: v.detach() for k, v in terms.items()}


@torch.no_grad()
def sync_gradients(module: nn.Module) -> None:
    """Average every trainable parameter's gradient over processes (what DDP's hooks do), in one all-reduce per
    dtype. A parameter without a gradient counts as zero."""
    if world_size() == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
