"""GradCache (``train.contrastive_chunk``): a chunked step gives the loss and gradients of the full-batch step.

The reference is the plain step (``module(batch)`` then ``backward``) on the whole batch; the chunked step encodes
in chunks without a graph, takes the loss and its gradient on the whole batch, and replays each chunk. The
two-process case (with the gather with gradient) is ``test_distributed_equivalence.py``.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from tiny_towers import build, grads, make_batch
from tolerances import F32, F32_SCALAR
from torch import nn

from mmssl.train.grad_cache import GradCache, cached_inputs, check_cacheable, slice_rows

ROWS = 12


def full_step(module: nn.Module, batch, scale: float = 1.0) -> float:
    terms = module(batch)
    (terms["loss"] * scale).backward()
    return float(terms["loss"].detach())


def cached_step(module: nn.Module, batch, chunk: int, scale: float = 1.0) -> float:
    cache = GradCache(chunk, nullcontext, lambda loss: loss.backward())
    return float(cache.step(module, module, batch, scale)["loss"])


def assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Close within float32 rounding of the tensor's largest entries (an element is a sum over the batch of terms
    that size; where they cancel, its own magnitude says nothing of the rounding)."""
    assert got.keys() == want.keys()
    for name in want:
        scale = max(1.0, float(want[name].abs().max()))
        tol = {"rtol": F32["rtol"], "atol": F32["atol"] * scale}
        torch.testing.assert_close(got[name], want[name], **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("kind", "chunk"), [("clip", 1), ("clip", 5), ("siglip", 5), ("simclr", 5), ("binding", 5)])
def test_chunked_step_equals_the_full_batch(kind: str, chunk: int) -> None:
    batch = make_batch(kind, ROWS, seed=1)
    reference, chunked = build(kind), build(kind)
    want_loss = full_step(reference, batch)
    got_loss = cached_step(chunked, batch, chunk)
    assert got_loss == pytest.approx(want_loss, **F32_SCALAR)
    want = grads(reference)
    assert any(g.abs().sum() > 0 for n, g in want.items() if n.startswith("model.encoders.image.transformer"))
    assert_same_grads(grads(chunked), want)


def test_chunks_replay_dropout_with_the_rng_of_their_first_pass() -> None:
    """With dropout on and one chunk, the first pass draws the same masks as the full step; the replay must
    draw them again (RNG restored), or the encoder gradients belong to other masks."""
    batch = make_batch("clip", ROWS, seed=2)
    reference, chunked = build("clip", dropout=0.3), build("clip", dropout=0.3)
    torch.manual_seed(7)
    want_loss = full_step(reference, batch)
    after_full = torch.rand(())
    torch.manual_seed(7)
    got_loss = cached_step(chunked, batch, chunk=ROWS)
    assert torch.rand(()) == after_full  # the step leaves the RNG where the plain step does
    assert got_loss == pytest.approx(want_loss, **F32_SCALAR)
    assert_same_grads(grads(chunked), grads(reference))


def test_gradient_accumulation_of_chunked_micro_batches() -> None:
    """Two micro-batches, each chunked and scaled by 1/2, accumulate the gradient of two plain scaled steps."""
    first, second = make_batch("siglip", ROWS, seed=3), make_batch("siglip", ROWS, seed=4)
    reference, chunked = build("siglip"), build("siglip")
    for batch in (first, second):
        full_step(reference, batch, 0.5)
        cached_step(chunked, batch, 4, 0.5)
    assert_same_grads(grads(chunked), grads(reference))


def test_only_contrastive_inputs_are_cached_and_batch_norm_encoders_are_refused() -> None:
    module = build("binding")
    assert cached_inputs(module.objectives) == [("image", "view0"), ("text", "clean"), ("audio", "clean")]
    check_cacheable(dict(module.model.encoders), cached_inputs(module.objectives))
    encoders = dict(module.model.encoders) | {"audio": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))}
    with pytest.raises(ValueError, match="modality 'audio' has batch-norm"):
        check_cacheable(encoders, cached_inputs(module.objectives))


def test_slice_rows_of_nested_batches() -> None:
    data = {"ids": torch.arange(10).view(5, 2), "mask": torch.ones(5, 2, dtype=torch.bool)}
    part = slice_rows(data, 1, 3)
    assert part["ids"].tolist() == [[2, 3], [4, 5]] and part["mask"].shape == (2, 2)
    assert slice_rows(None, 0, 1) is None
