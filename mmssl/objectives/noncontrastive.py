"""Pure tensor loss functions of non-contrastive objectives: Barlow Twins, VICReg, BYOL, DINO, data2vec.

Like :mod:`mmssl.objectives.functional`, every function is stateless and returns ``dict[str, Tensor]`` with a
differentiable ``"loss"`` and detached, named logging terms (``data2vec_targets`` returns the target tensor).
State that the published methods keep (DINO's center, the EMA teacher) lives in the objective modules; the
pure update rules are here (:func:`dino_center_update`, :func:`ema_momentum`).

Distributed convention (``gather=True``, Barlow Twins and VICReg): both methods compute their statistics over
the *global* batch. The embeddings of all processes are gathered with gradient
(:func:`mmssl.objectives.distributed.gather_rows`; counts may differ) and every process computes the same
full-batch loss. The gather's backward sums the gradients of all processes for each slice
(``world * dL/dz_local``) and DDP averages the parameter gradients (``/ world``), so each process ends up with
exactly the single-process full-batch gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmssl.objectives.distributed import gather_rows, world_size

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "data2vec_targets",
    "dino_center_update",
    "dino_loss",
    "ema_momentum",
    "instance_norm_tokens",
    "koleo_loss",
    "off_diagonal",
    "vicreg_loss",
]


def _check_pair(a: Tensor, b: Tensor, names: str, min_rows: int = 1) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must both be [n, d] with equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{names} need at least {min_rows} rows, got {a.shape[0]}")


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened.

    Shapes:
        m: ``[d, d]`` -> ``[d * (d - 1)]``.
    """
    d = m.shape[0]
    if m.dim() != 2 or m.shape[1] != d:
        raise ValueError(f"expected a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(
    z_a: Tensor, z_b: Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5, gather: bool = False
) -> dict[str, Tensor]:
    """Barlow Twins redundancy-reduction loss (Zbontar et al. 2021).

    Each embedding dimension is standardised along the batch (``BatchNorm1d(affine=False)`` of the reference
    code: biased variance, ``eps`` added), the cross-correlation ``c = a_norm.T @ b_norm / N`` is formed, and

    ``loss = sum_i (1 - c_ii)^2 + lambda_offdiag * sum_{i != j} c_ij^2``.

    Args:
        z_a: Projections (expander outputs) of the first view.
        z_b: Projections of the second view, same shape.
        lambda_offdiag: Weight of the redundancy-reduction (off-diagonal) term; the paper uses 5e-3.
        eps: Added to the per-dimension variance before standardising.
        gather: Compute the statistics over the global batch of all processes (gathered with gradient).

    Returns:
        ``loss``, and detached ``on_diag`` (sum of (1 - c_ii)^2), ``off_diag`` (unweighted sum of the squared
        off-diagonal entries) and ``corr_diag`` (mean of c_ii).

    Shapes:
        z_a, z_b: ``[n, d]``; c: ``[d, d]``; with ``gather`` N = world * n rows enter the statistics.
    """
    _check_pair(z_a, z_b, "z_a, z_b")
    if gather:
        z_a, z_b = gather_rows(z_a)[0], gather_rows(z_b)[0]
    n = z_a.shape[0]

    def standardise(z: Tensor) -> Tensor:
        z = z - z.mean(dim=0)
        return z / (z.pow(2).mean(dim=0) + eps).sqrt()

    c = standardise(z_a).T @ standardise(z_b) / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    loss = on_diag + lambda_offdiag * off_diag
    return {
        "loss": loss,
        "on_diag": on_diag.detach(),
        "off_diag": off_diag.detach(),
        "corr_diag": torch.diagonal(c).mean().detach(),
    }


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    gather: bool = False,
) -> dict[str, Tensor]:
    """VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022), as in the reference code.

    * invariance: ``mean((z_a - z_b)^2)`` over all ``N * d`` entries;
    * variance: for each branch, ``mean_j relu(1 - sqrt(var_j + eps))`` with the unbiased variance of
      dimension j along the batch; the two branches are averaged;
    * covariance: for each branch, the sum of the squared off-diagonal entries of the covariance matrix
      ``(z - mean).T @ (z - mean) / (N - 1)``, divided by d; the two branches are added.

    ``loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance`` (defaults 25, 25, 1).

    Args:
        z_a: Projections (expander outputs) of the first view.
        z_b: Projections of the second view, same shape.
        sim_weight: Weight of the invariance term (lambda).
        var_weight: Weight of the variance term (mu).
        cov_weight: Weight of the covariance term (nu).
        eps: Added to the variance before the square root.
        gather: Compute every term over the global batch (the reference gathers before all terms).

    Returns:
        ``loss``, and the detached unweighted terms ``invariance``, ``variance``, ``covariance`` and ``std``
        (mean per-dimension std of both branches).

    Shapes:
        z_a, z_b: ``[n, d]`` with n >= 2 (the unbiased variance needs two rows).
    """
    _check_pair(z_a, z_b, "z_a, z_b", min_rows=2 if not gather else 1)
    if gather:
        z_a, z_b = gather_rows(z_a)[0], gather_rows(z_b)[0]
    n, d = z_a.shape
    if n < 2:
        raise ValueError("vicreg_loss needs at least 2 rows in the (global) batch")
    invariance = F.mse_loss(z_a, z_b)
    a, b = z_a - z_a.mean(dim=0), z_b - z_b.mean(dim=0)
    std_a, std_b = (a.var(dim=0) + eps).sqrt(), (b.var(dim=0) + eps).sqrt()
    variance = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
    cov_a, cov_b = a.T @ a / (n - 1), b.T @ b / (n - 1)
    covariance = off_diagonal(cov_a).pow(2).sum() / d + off_diagonal(cov_b).pow(2).sum() / d
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return {
        "loss": loss,
        "invariance": invariance.detach(),
        "variance": variance.detach(),
        "covariance": covariance.detach(),
        "std": ((std_a.mean() + std_b.mean()) / 2).detach(),
    }


def byol_loss(p: Tensor, z: Tensor) -> dict[str, Tensor]:
    """BYOL regression loss (Grill et al. 2020): ``2 - 2 * cos(p, z)``, averaged over rows.

    ``z`` is the target (the teacher's projection); it is detached here, so no gradient reaches the teacher
    even if the caller forgot ``no_grad``.

    Args:
        p: The online network's predictions.
        z: The target network's projections of the other view.

    Returns:
        ``loss``, and detached ``cos`` (mean cosine similarity).

    Shapes:
        p, z: ``[n, d]``.
    """
    _check_pair(p, z, "p, z")
    cos = F.cosine_similarity(p, z.detach(), dim=-1)
    loss = (2 - 2 * cos).mean()
    return {"loss": loss, "cos": cos.mean().detach()}


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2's weight 0.1 on the student's embedding).

    The Kozachenko-Leonenko entropy estimate of the L2-normalised rows, negated: ``-mean_i log(d_i + eps)``
    where ``d_i`` is the Euclidean distance from row i to its nearest other row. Minimising it spreads the
    embeddings of a batch over the sphere. Needs two rows or more.

    Shapes:
        x: ``[n, d]`` -> scalar.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss needs [n, d] with n >= 2, got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():  # the nearest neighbour is chosen without gradient; the distance carries it
        dots = x @ x.T
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()


def dino_loss(
    student_logits_list: Sequence[Tensor],
    teacher_logits_list: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> dict[str, Tensor]:
    """DINO self-distillation loss (Caron et al. 2021).

    The teacher's distribution of crop i is ``softmax((t_i - center) / teacher_temp)`` (centred, sharpened,
    no gradient); the student's of crop j is ``log_softmax(s_j / student_temp)``. The loss is the cross entropy
    ``-sum_k q_i[k] log p_j[k]``, averaged over the rows and over every pair (i, j) of *different* crops, as
    in the reference ``DINOLoss`` (teacher crops are the first ``len(teacher_logits_list)`` student crops).

    Args:
        student_logits_list: Student head outputs, one per crop (global crops first).
        teacher_logits_list: Teacher head outputs of the global crops.
        center: The running center of the teacher outputs (see :func:`dino_center_update`).
        student_temp: Student softmax temperature (0.1).
        teacher_temp: Teacher softmax temperature (0.04; warmed up from a lower value in the paper).

    Returns:
        ``loss``, and detached ``teacher_entropy`` (mean entropy of the teacher distributions) and
        ``kl`` (mean KL(q || p) over the pairs, i.e. the loss minus the teacher entropy).

    Shapes:
        each student/teacher logits: ``[n, K]``; center: ``[1, K]`` or ``[K]``.
    """
    if len(teacher_logits_list) < 1 or len(student_logits_list) < 2:
        raise ValueError("dino_loss needs at least one teacher crop and two student crops")
    if len(teacher_logits_list) > len(student_logits_list):
        raise ValueError("the teacher crops must be among the student crops (the first ones)")
    shape = student_logits_list[0].shape
    for t in (*student_logits_list, *teacher_logits_list):
        if t.dim() != 2 or t.shape != shape:
            raise ValueError(f"all logits must be [n, K] with one shape, got {tuple(t.shape)} and {tuple(shape)}")
    if student_temp <= 0 or teacher_temp <= 0:
        raise ValueError("temperatures must be > 0")
    center = center.reshape(1, -1).detach()
    log_p = [F.log_softmax(s / student_temp, dim=-1) for s in student_logits_list]
    q = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_logits_list]
    total, pairs, entropy = 0.0, 0, 0.0
    for iq, qi in enumerate(q):
        entropy = entropy + -(qi * qi.clamp_min(1e-30).log()).sum(-1).mean()
        for v, lp in enumerate(log_p):
            if v == iq:
                continue
            total = total + (-qi * lp).sum(dim=-1).mean()
            pairs += 1
    loss = total / pairs
    teacher_entropy = (entropy / len(q)).detach()
    return {"loss": loss, "teacher_entropy": teacher_entropy, "kl": loss.detach() - teacher_entropy}


@torch.no_grad()
def dino_center_update(center: Tensor, teacher_logits: Sequence[Tensor], momentum: float = 0.9) -> Tensor:
    """DINO's center EMA: ``center * m + mean(teacher outputs) * (1 - m)``.

    The mean runs over the rows of every teacher crop (and, under data parallelism, of every process: the
    sum and the row count are all-reduced, as in the reference code, which assumes equal counts).

    Shapes:
        center: ``[1, K]``; each teacher logits: ``[n, K]`` -> ``[1, K]`` (a new tensor).
    """
    stacked = torch.cat([t.detach() for t in teacher_logits]).float()
    total = stacked.sum(dim=0, keepdim=True)
    count = torch.tensor([float(stacked.shape[0])], device=total.device)
    if world_size() > 1:  # row counts may differ between processes: reduce them too
        dist.all_reduce(total)
        dist.all_reduce(count)
    return center * momentum + (total / count.clamp_min(1.0)).to(center.dtype) * (1 - momentum)


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Cosine momentum schedule of BYOL/DINO: ``final - (final - base) * (cos(pi * k / K) + 1) / 2``.

    ``k = step`` is the 0-based index of the optimizer step just taken and ``K = total_steps``; the momentum
    is ``base`` at the first update and approaches ``final`` (1) at the end.
    """
    if total_steps <= 0:
        return final
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1) / 2


def instance_norm_tokens(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise every channel of every sample over its tokens (``F.instance_norm`` over the token axis).

    Padding tokens are left out of the statistics (and set to 0) when ``padding_mask`` is given.

    Shapes:
        x: ``[B, N, D]``; padding_mask: ``[B, N]`` bool (True = padding) -> ``[B, N, D]``.
    """
    if padding_mask is None:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return (x - mean) / (var + eps).sqrt()
    weight = (~padding_mask).unsqueeze(-1).to(x.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * weight).sum(dim=1, keepdim=True) / count
    var = ((x - mean).pow(2) * weight).sum(dim=1, keepdim=True) / count
    return (x - mean) / (var + eps).sqrt() * weight


@torch.no_grad()
def data2vec_targets(layer_outputs: Sequence[Tensor], top_k: int, padding_mask: Tensor | None = None) -> Tensor:
    """data2vec regression targets (Baevski et al. 2022, 2023) from the teacher's block outputs.

    The last ``top_k`` block outputs are each instance-normalised (per sample and channel, over the tokens),
    averaged, and the average is layer-normalised over the channels (no affine parameters).

    Args:
        layer_outputs: The teacher's per-block token outputs, first block first.
        top_k: How many of the last blocks to average (all of them when larger than their number).
        padding_mask: Padding tokens, left out of the instance-norm statistics.

    Returns:
        Detached targets.

    Shapes:
        each layer output: ``[B, N, D]`` -> ``[B, N, D]``.
    """
    if not layer_outputs:
        raise ValueError("data2vec_targets needs at least one layer output")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    chosen = list(layer_outputs)[-top_k:]
    avg = sum(instance_norm_tokens(x.float(), padding_mask) for x in chosen) / len(chosen)
    return F.layer_norm(avg, avg.shape[-1:])
