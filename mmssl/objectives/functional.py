"""Pure tensor loss functions for contrastive, alignment and masked-prediction objectives.

Every function is stateless: learnable quantities (``logit_scale``, ``logit_bias``) are
passed in by the caller. Contrastive losses return ``dict[str, Tensor]`` with a
differentiable ``"loss"`` and detached logging terms; masked losses return a scalar.

Distributed convention (``gather=True``): embeddings of all processes are gathered *with*
gradient (:func:`mmssl.objectives.distributed.gather_with_grad`); each process computes
the loss of its own rows against all gathered columns and normalises by its *local* row
count. The mean of the per-process losses then equals the loss over the full global batch,
and DDP's averaging of gradients yields exactly the single-process full-batch gradient.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.objectives.distributed import gather_rows

__all__ = [
    "clip_loss",
    "content_ids",
    "info_nce",
    "masked_accuracy",
    "masked_cross_entropy",
    "masked_mse",
    "normalized_patch_targets",
    "siglip_loss",
]

CLIP_MAX_LOGIT_SCALE = 100.0
_HASH_PRIME = 2_147_483_647  # 2**31 - 1: products of two residues fit in int64
_HASH_BLOCK = 4096  # columns per block: a block's sum of residues (< 4096 * 2**31) fits in int64 too


def content_ids(rows: Tensor) -> Tensor:
    """An int64 id per row that is equal for rows with identical content (and, but for chance, only for them).

    A row's values (their bit patterns for floats) are hashed exactly with two polynomial hashes modulo 2**31 - 1,
    so the id of a row does not depend on the batch it is in (ids from different processes compare). The values
    are read in blocks of ``_HASH_BLOCK`` columns, so the int64 temporaries stay at ``[n, _HASH_BLOCK]`` however
    large a row is (a 224-pixel RGB image has 150k values).

    Shapes: rows ``[n, ...]`` (any dtype) -> ``[n]`` long.
    """
    flat = rows.reshape(rows.shape[0], -1)
    if flat.is_floating_point():
        flat = flat.float().contiguous().view(torch.int32)
    width = flat.shape[1]
    hashes = []
    for base in (1_000_003, 998_244_353):
        powers = _powers(base, width, rows.device)
        total = flat.new_zeros(flat.shape[0], dtype=torch.long)
        for lo in range(0, width, _HASH_BLOCK):
            values = flat[:, lo : lo + _HASH_BLOCK].long() % _HASH_PRIME
            total = (total + (values * powers[lo : lo + _HASH_BLOCK]).remainder_(_HASH_PRIME).sum(1)) % _HASH_PRIME
        hashes.append(total)
    return hashes[0] * _HASH_PRIME + hashes[1]


@functools.lru_cache(maxsize=32)
def _powers(base: int, count: int, device: torch.device) -> Tensor:
    """``base**k mod (2**31 - 1)`` for k < count, built once per (base, count, device). Shapes: -> [count] long."""
    return torch.tensor([pow(base, k, _HASH_PRIME) for k in range(count)], dtype=torch.long, device=device)


def _positive_mask(
    ids: tuple[Tensor | None, Tensor | None], n: int, offset: int, big_n: int, gather: bool, device: torch.device
) -> Tensor:
    """[n, N] bool: True where column j is row i's pair (j = offset + i) or has identical content on either side.

    ``ids`` are the local content ids ``[n]`` of each modality (None: every row is unique there).
    """
    rows = torch.arange(n, device=device) + offset
    mask = torch.arange(big_n, device=device)[None, :] == rows[:, None]
    for local in ids:
        if local is None:
            continue
        with torch.no_grad():
            every = gather_rows(local)[0] if gather else local
        mask = mask | (local[:, None] == every[None, :])
    return mask


def _multi_positive_cross_entropy(logits: Tensor, positive: Tensor) -> Tensor:
    """Per-row cross entropy against the uniform distribution over the row's positives (UniCL).

    Shapes: logits, positive ``[n, N]`` -> ``[n]``.
    """
    target = positive.to(logits.dtype)
    target = target / target.sum(1, keepdim=True).clamp_min(1)
    return -(target * logits.log_softmax(1)).sum(1)


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must both be [n, d] with equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def _gather_pair(a: Tensor, b: Tensor, gather: bool) -> tuple[Tensor, Tensor, int, float]:
    """Return (all_a, all_b, offset of this process's rows, weight of the local mean); see ``gather_rows``."""
    if not gather:
        return a, b, 0, 1.0
    a_all, offset, weight = gather_rows(a)
    b_all, _, _ = gather_rows(b)
    return a_all, b_all, offset, weight


def _mean(values: Tensor, weight: float) -> Tensor:
    """``weight`` times the mean of ``values`` (0 for an empty tensor, e.g. a process without pairs)."""
    return values.sum() * (weight / max(values.numel(), 1))


def _top1(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of rows whose label has the largest logit (0 without rows). Shapes: [n, N], [n] -> []."""
    if logits.numel() == 0:
        return logits.new_zeros(())
    return (logits.argmax(1) == labels).float().mean()


def _top1_positive(logits: Tensor, positive: Tensor) -> Tensor:
    """Share of rows whose largest logit is one of their positives. Shapes: [n, N], [n, N] bool -> []."""
    if logits.numel() == 0:
        return logits.new_zeros(())
    return positive.gather(1, logits.argmax(1, keepdim=True)).float().mean()


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float, gather: bool = False) -> dict[str, Tensor]:
    """SimCLR NT-Xent loss over two augmented views.

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are the two views of one sample. Each of the
    ``2n`` local embeddings is an anchor; its candidates are all ``2N`` (global) embeddings
    except itself, its positive is the other view of the same sample. Embeddings are
    L2-normalised here, similarities are cosine / ``temperature``.

    Args:
        z_a: Projections of the first view (need not be normalised).
        z_b: Projections of the second view, same shape as ``z_a``.
        temperature: Softmax temperature (> 0), e.g. 0.1 or 0.5.
        gather: Use the views of all processes as candidates (with gradient). The loss is the
            mean over this process's ``2n`` anchors, so the mean over processes equals the
            full-batch loss.

    Returns:
        ``{"loss": scalar, "acc": detached fraction of anchors whose positive is top-1}``.

    Shapes:
        z_a, z_b: ``[n, d]``; with ``gather`` every process has the same ``n``, ``N = world * n``.
        similarity matrix: ``[2n, 2N]``.
    """
    _check_pair(z_a, z_b, "z_a, z_b")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z_a.shape[0]
    a = F.normalize(z_a, dim=-1)
    b = F.normalize(z_b, dim=-1)
    a_all, b_all, offset, weight = _gather_pair(a, b, gather)
    big_n = a_all.shape[0]

    anchors = torch.cat([a, b])  # [2n, d]
    candidates = torch.cat([a_all, b_all])  # [2N, d]
    logits = anchors @ candidates.T / temperature  # [2n, 2N]

    idx = torch.arange(n, device=logits.device) + offset
    self_idx = torch.cat([idx, idx + big_n])
    pos_idx = torch.cat([idx + big_n, idx])
    cols = torch.arange(2 * big_n, device=logits.device)
    logits = logits.masked_fill(cols[None, :] == self_idx[:, None], float("-inf"))

    loss = _mean(F.cross_entropy(logits, pos_idx, reduction="none"), weight)
    with torch.no_grad():
        acc = _top1(logits, pos_idx)
    return {"loss": loss, "acc": acc}


def clip_loss(
    x: Tensor,
    y: Tensor,
    logit_scale: Tensor,
    gather: bool = False,
    ids: tuple[Tensor | None, Tensor | None] = (None, None),
) -> dict[str, Tensor]:
    """Symmetric InfoNCE of CLIP over paired rows of two modalities.

    ``logits = exp(logit_scale) * x @ y.T`` (the factor is clamped to at most 100, as in
    CLIP); the loss is the mean of the cross entropies that pick the paired column for every
    row of ``x`` (x->y) and the paired row for every row of ``y`` (y->x).

    Args:
        x: L2-normalised embeddings of modality x.
        y: L2-normalised embeddings of modality y; row ``i`` pairs with ``x[i]``.
        logit_scale: Learnable scalar, log of the inverse temperature (CLIP init: log(1/0.07)).
        gather: Local rows against the columns of all processes (open_clip ``local_loss``
            style, labels offset by ``rank * n``); each direction is a mean over the local rows.
        ids: Content ids ``[n]`` of the x and the y rows (:func:`content_ids`; None: all distinct). Rows with
            identical content on either side are positives of each other (UniCL, Yang et al. 2022): two rows with
            the same caption cannot be told apart by it, so they are not made negatives. The cross entropy then
            targets the uniform distribution over a row's positives. Without duplicates this is CLIP exactly.

    Returns:
        ``loss``, and detached ``loss_x2y``, ``loss_y2x``, ``acc`` (mean top-1 accuracy of both
        directions: the largest logit is a positive) and ``scale`` (the clamped ``exp(logit_scale)``).

    Shapes:
        x, y: ``[n, d]``; logit_scale: ``[]``; logits per direction: ``[n, N]``.
    """
    _check_pair(x, y, "x, y")
    n = x.shape[0]
    scale = logit_scale.exp().clamp(max=CLIP_MAX_LOGIT_SCALE)
    x_all, y_all, offset, weight = _gather_pair(x, y, gather)
    logits_x2y = scale * (x @ y_all.T)  # [n, N]
    if x_all is x:  # single process: one matmul serves both directions
        logits_y2x = logits_x2y.T
    else:
        logits_y2x = scale * (y @ x_all.T)
    labels = torch.arange(n, device=x.device) + offset
    if ids[0] is None and ids[1] is None:
        loss_x2y = _mean(F.cross_entropy(logits_x2y, labels, reduction="none"), weight)
        loss_y2x = _mean(F.cross_entropy(logits_y2x, labels, reduction="none"), weight)
        with torch.no_grad():
            acc = 0.5 * (_top1(logits_x2y, labels) + _top1(logits_y2x, labels))
    else:
        # The relation "identical x or identical y" is symmetric, so one mask serves both directions.
        positive = _positive_mask(ids, n, offset, x_all.shape[0], gather, x.device)
        loss_x2y = _mean(_multi_positive_cross_entropy(logits_x2y, positive), weight)
        loss_y2x = _mean(_multi_positive_cross_entropy(logits_y2x, positive), weight)
        with torch.no_grad():
            acc = 0.5 * (_top1_positive(logits_x2y, positive) + _top1_positive(logits_y2x, positive))
    loss = 0.5 * (loss_x2y + loss_y2x)
    return {
        "loss": loss,
        "loss_x2y": loss_x2y.detach(),
        "loss_y2x": loss_y2x.detach(),
        "acc": acc,
        "scale": scale.detach(),
    }


def siglip_loss(
    x: Tensor,
    y: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    gather: bool = False,
    ids: tuple[Tensor | None, Tensor | None] = (None, None),
) -> dict[str, Tensor]:
    """Pairwise sigmoid loss of SigLIP.

    ``loss = -1/n * sum_ij log sigmoid(z_ij * (exp(logit_scale) * x_i.y_j + logit_bias))`` with
    ``z_ij = +1`` for the paired column and ``-1`` otherwise. The sum runs over all ``n * N``
    pairs of local rows and (global) columns and is divided by the number of *rows*: the
    full-batch loss divides the ``N * N`` pair sum by ``N``. ``exp(logit_scale)`` is not clamped.

    Args:
        x: L2-normalised embeddings of modality x.
        y: L2-normalised embeddings of modality y; row ``i`` pairs with ``x[i]``.
        logit_scale: Learnable scalar, log of the logit scale (SigLIP init: log 10).
        logit_bias: Learnable scalar bias (SigLIP init: -10).
        gather: Local ``x`` rows against the gathered ``y`` of all processes (with gradient),
            normalised by the local ``n``, so that the mean over processes is the full-batch loss.
        ids: Content ids ``[n]`` of the x and the y rows (None: all distinct); pairs with identical content on
            either side get ``z_ij = +1`` too (see :func:`clip_loss`).

    Returns:
        ``loss``, and detached ``acc`` (fraction of rows whose paired column has the largest
        logit), ``pos_prob`` / ``neg_prob`` (mean sigmoid of paired / unpaired logits;
        ``neg_prob`` is 0 when there are no unpaired columns).

    Shapes:
        x, y: ``[n, d]``; logit_scale, logit_bias: ``[]``; logits: ``[n, N]``.
    """
    _check_pair(x, y, "x, y")
    n = x.shape[0]
    y_all, offset, weight = gather_rows(y) if gather else (y, 0, 1.0)
    logits = logit_scale.exp() * (x @ y_all.T) + logit_bias  # [n, N]
    positive = _positive_mask(ids, n, offset, y_all.shape[0], gather, x.device)  # [n, N]
    signs = positive.to(logits.dtype) * 2 - 1

    loss = -F.logsigmoid(signs * logits).sum() * (weight / max(n, 1))
    with torch.no_grad():
        probs = logits.sigmoid()
        acc = _top1_positive(logits, positive)
        pos_prob = _mean(probs[positive], 1.0)
        n_neg = positive.numel() - int(positive.sum())
        neg_prob = probs.masked_fill(positive, 0).sum() / max(n_neg, 1)
    return {"loss": loss, "acc": acc, "pos_prob": pos_prob, "neg_prob": neg_prob}


def _check_mask(mask: Tensor, leading: torch.Size) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != leading:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(leading)}")


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked tokens (MAE).

    The per-token loss is the mean over the last dim of ``(pred - target) ** 2``; the result
    is the mean of the per-token losses over the tokens where ``mask`` is True. Unmasked
    tokens get zero weight (and zero gradient); 0 is returned when no token is masked.

    Args:
        pred: Predicted patches.
        target: Target patches (e.g. :func:`normalized_patch_targets` of the pixels).
        mask: True where the token was masked and has to be predicted.

    Returns:
        Scalar loss.

    Shapes:
        pred, target: ``[B, N, P]``; mask: ``[B, N]`` bool.
    """
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    _check_mask(mask, pred.shape[:-1])
    per_token = (pred - target).pow(2).mean(dim=-1)
    weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1)


def masked_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean cross entropy over masked positions (masked language / token modelling).

    Only masked positions are evaluated, so ``target`` may hold anything (e.g. padding or
    -100) where ``mask`` is False. Returns 0 (with a zero gradient) when nothing is masked.

    Args:
        logits: Unnormalised scores over the vocabulary.
        target: Token ids to predict.
        mask: True where the position was masked and has to be predicted.

    Returns:
        Scalar loss.

    Shapes:
        logits: ``[B, N, V]``; target: ``[B, N]`` long; mask: ``[B, N]`` bool.
    """
    if logits.dim() < 2 or target.shape != logits.shape[:-1]:
        raise ValueError(f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}[:-1]")
    _check_mask(mask, target.shape)
    selected = logits[mask]  # [M, V]
    labels = target[mask]  # [M]
    return F.cross_entropy(selected, labels, reduction="sum") / max(labels.numel(), 1)


@torch.no_grad()
def masked_accuracy(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Detached top-1 accuracy over masked positions (0 when nothing is masked).

    Shapes:
        logits: ``[B, N, V]``; target: ``[B, N]`` long; mask: ``[B, N]`` bool; returns ``[]``.
    """
    if logits.dim() < 2 or target.shape != logits.shape[:-1]:
        raise ValueError(f"target {tuple(target.shape)} must match logits {tuple(logits.shape)}[:-1]")
    _check_mask(mask, target.shape)
    correct = (logits.argmax(dim=-1) == target) & mask
    return correct.sum().float() / mask.sum().clamp(min=1).float()


def normalized_patch_targets(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise each patch by its own mean and variance (MAE ``norm_pix_loss``).

    ``(p - mean(p)) / sqrt(var(p) + eps)`` over the last dim, with the unbiased variance as
    in the MAE reference code (``Tensor.var`` default); a single-value patch (``P == 1``)
    uses the biased variance and maps to 0.

    Args:
        patches: Flattened pixel patches.
        eps: Added to the variance for stability.

    Returns:
        Tensor of the same shape as ``patches``.

    Shapes:
        patches: ``[B, N, P]`` (any leading dims); returns the same shape.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, correction=1 if patches.shape[-1] > 1 else 0)
    return (patches - mean) / (var + eps).sqrt()
