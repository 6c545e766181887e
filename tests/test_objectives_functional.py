"""Checks of mmssl.objectives.functional against independent reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import F32
from torch.testing import assert_close

from mmssl.objectives.functional import (
    clip_loss,
    info_nce,
    masked_accuracy,
    masked_cross_entropy,
    masked_mse,
    normalized_patch_targets,
    siglip_loss,
)

F64 = torch.float64


def rand(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(rand(n, d, seed=seed), dim=-1)


def orthogonal_pairs(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_i = e_i, y_j = e_{n+j}: every x_i.y_j is exactly 0 (needs d >= 2n)."""
    eye = torch.eye(d, dtype=F64)
    return eye[:n], eye[n : 2 * n]


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


# ---------------------------------------------------------------- reference computations


def ref_info_nce(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> tuple[float, float]:
    n = z_a.shape[0]
    z = np.concatenate([z_a.detach().numpy(), z_b.detach().numpy()]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    rows = [list(map(float, r)) for r in z]
    total, hits = 0.0, 0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = {k: dot(rows[i], rows[k]) / t for k in range(2 * n) if k != i}
        denom = sum(math.exp(s) for s in sims.values())
        total += -(sims[pos] - math.log(denom))
        hits += max(sims, key=sims.get) == pos
    return total / (2 * n), hits / (2 * n)


def ref_clip(x: torch.Tensor, y: torch.Tensor, scale: float) -> tuple[float, float, float]:
    xs, ys = x.tolist(), y.tolist()
    n = len(xs)
    lg = [[scale * dot(xs[i], ys[j]) for j in range(n)] for i in range(n)]
    x2y = sum(-lg[i][i] + math.log(sum(math.exp(lg[i][j]) for j in range(n))) for i in range(n)) / n
    y2x = sum(-lg[j][j] + math.log(sum(math.exp(lg[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (x2y + y2x), x2y, y2x


def ref_siglip(x: torch.Tensor, y: torch.Tensor, scale: float, bias: float) -> float:
    xs, ys = x.tolist(), y.tolist()
    n = len(xs)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * dot(xs[i], ys[j]) + bias
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / n


# ---------------------------------------------------------------- info_nce


@pytest.mark.parametrize(("n", "d", "t"), [(1, 3, 0.5), (4, 5, 0.1), (6, 8, 0.07)])
def test_info_nce_matches_loop_reference(n: int, d: int, t: float) -> None:
    z_a, z_b = rand(n, d, seed=1) * 3.0, rand(n, d, seed=2) * 0.2  # not normalised
    out = info_nce(z_a, z_b, temperature=t)
    loss, acc = ref_info_nce(z_a, z_b, t)
    assert_close(out["loss"], torch.tensor(loss, dtype=F64))
    assert_close(out["acc"], torch.tensor(acc, dtype=torch.float32))
    assert not out["acc"].requires_grad


def test_info_nce_float32_matches_float64() -> None:
    z_a, z_b = rand(5, 7, seed=3), rand(5, 7, seed=4)
    out32 = info_nce(z_a.float(), z_b.float(), temperature=0.2)["loss"]
    out64 = info_nce(z_a, z_b, temperature=0.2)["loss"]
    assert out32.dtype == torch.float32
    assert_close(out32.double(), out64, **F32)


def test_info_nce_known_values() -> None:
    n, d = 4, 6
    views = torch.eye(d, dtype=F64)[:n] * torch.tensor([[0.5], [2.0], [3.0], [7.0]], dtype=F64)
    # identical one-hot views: positive cosine 1, every negative cosine 0
    for t in (0.5, 1.0):
        expected = math.log(math.exp(1 / t) + 2 * n - 2) - 1 / t
        assert_close(info_nce(views, views.clone(), temperature=t)["loss"], torch.tensor(expected, dtype=F64))
    out = info_nce(views, views.clone(), temperature=0.01)
    assert out["loss"].item() < 1e-30  # exact value (2n-2) e^-100 ~ 2e-43
    assert out["acc"].item() == 1.0
    # one sample: the positive is the only candidate, the loss is exactly 0
    assert info_nce(rand(1, 3, seed=5), rand(1, 3, seed=6), temperature=0.1)["loss"].item() == 0.0


def test_info_nce_gradients() -> None:
    z_a = rand(3, 4, seed=7).requires_grad_()
    z_b = rand(3, 4, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, temperature=0.3)["loss"], (z_a, z_b))
    info_nce(z_a, z_b, temperature=0.3)["loss"].backward()
    for g in (z_a.grad, z_b.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_info_nce_gather_single_process_is_identity() -> None:
    z_a, z_b = rand(4, 5, seed=9), rand(4, 5, seed=10)
    assert_close(info_nce(z_a, z_b, 0.2, gather=True)["loss"], info_nce(z_a, z_b, 0.2)["loss"])


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        info_nce(rand(3, 4, seed=0), rand(2, 4, seed=1), temperature=0.1)
    with pytest.raises(ValueError):
        info_nce(rand(3, 4, seed=0), rand(3, 4, seed=1), temperature=0.0)


# ---------------------------------------------------------------- clip_loss


@pytest.mark.parametrize(("n", "d", "log_scale"), [(1, 4, 2.0), (5, 8, 0.0), (6, 3, math.log(1 / 0.07))])
def test_clip_matches_loop_reference(n: int, d: int, log_scale: float) -> None:
    x, y = unit_rows(n, d, seed=11), unit_rows(n, d, seed=12)
    out = clip_loss(x, y, torch.tensor(log_scale, dtype=F64))
    loss, x2y, y2x = ref_clip(x, y, math.exp(log_scale))
    assert_close(out["loss"], torch.tensor(loss, dtype=F64))
    assert_close(out["loss_x2y"], torch.tensor(x2y, dtype=F64))
    assert_close(out["loss_y2x"], torch.tensor(y2x, dtype=F64))
    assert_close(out["scale"], torch.tensor(math.exp(log_scale), dtype=F64))


def test_clip_matches_cross_entropy_on_hand_built_logits_and_accuracy() -> None:
    x, y = unit_rows(6, 4, seed=13), unit_rows(6, 4, seed=14)
    scale = 5.0
    logits = torch.empty(6, 6, dtype=F64)
    for i in range(6):
        for j in range(6):
            logits[i, j] = scale * float(x[i] @ y[j])
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    out = clip_loss(x, y, torch.tensor(math.log(scale), dtype=F64))
    assert_close(out["loss"], expected)
    acc = (
        0.5
        * (
            sum(int(logits[i].argmax() == i) for i in range(6))
            + sum(int(logits[:, j].argmax() == j) for j in range(6))
        )
        / 6
    )
    assert out["acc"].item() == pytest.approx(acc)


def test_clip_known_values() -> None:
    n, d = 5, 10
    x, y = orthogonal_pairs(n, d)
    # all logits 0 -> uniform softmax -> log(n) in both directions
    out = clip_loss(x, y, torch.tensor(0.0, dtype=F64))
    for key in ("loss", "loss_x2y", "loss_y2x"):
        assert_close(out[key], torch.tensor(math.log(n), dtype=F64))
    # x = y = one-hot rows: logits = s * I -> log(e^s + n - 1) - s
    s = 3.0
    eye = torch.eye(n, dtype=F64)
    assert_close(
        clip_loss(eye, eye, torch.tensor(math.log(s), dtype=F64))["loss"],
        torch.tensor(math.log(math.exp(s) + n - 1) - s, dtype=F64),
    )


def test_clip_scale_is_clamped_at_100() -> None:
    x, y = unit_rows(4, 6, seed=15), unit_rows(4, 6, seed=16)
    big = torch.tensor(math.log(1000.0), dtype=F64, requires_grad=True)
    out = clip_loss(x, y, big)
    assert_close(out["loss"], torch.tensor(ref_clip(x, y, 100.0)[0], dtype=F64))
    assert out["scale"].item() == pytest.approx(100.0)
    out["loss"].backward()
    assert big.grad is not None and big.grad.item() == 0.0


def test_clip_gradients_reach_inputs_and_scale() -> None:
    x = unit_rows(4, 3, seed=17).requires_grad_()
    y = unit_rows(4, 3, seed=18).requires_grad_()
    scale = torch.tensor(1.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: clip_loss(a, b, s)["loss"], (x, y, scale))
    clip_loss(x, y, scale)["loss"].backward()
    for g in (x.grad, y.grad, scale.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # analytic d loss / d logit_scale = s * sum over both directions of (p - onehot) . sims / (2n)
    sims = (x @ y.T).detach()
    s = math.exp(1.3)
    p_x2y = torch.softmax(s * sims, dim=1)
    p_y2x = torch.softmax(s * sims.T, dim=1)
    eye = torch.eye(4, dtype=F64)
    expected = s * (((p_x2y - eye) * sims).sum() + ((p_y2x - eye) * sims.T).sum()) / 8
    assert_close(scale.grad, expected)


def test_clip_gather_single_process_is_identity() -> None:
    x, y = unit_rows(4, 5, seed=19), unit_rows(4, 5, seed=20)
    s = torch.tensor(2.0, dtype=F64)
    assert_close(clip_loss(x, y, s, gather=True)["loss"], clip_loss(x, y, s)["loss"])


# ---------------------------------------------------------------- siglip_loss


@pytest.mark.parametrize(
    ("n", "d", "log_scale", "bias"), [(1, 3, 0.5, -1.0), (5, 6, math.log(10), -10.0), (7, 4, 1.0, 0.5)]
)
def test_siglip_matches_loop_reference(n: int, d: int, log_scale: float, bias: float) -> None:
    x, y = unit_rows(n, d, seed=21), unit_rows(n, d, seed=22)
    out = siglip_loss(x, y, torch.tensor(log_scale, dtype=F64), torch.tensor(bias, dtype=F64))
    assert_close(out["loss"], torch.tensor(ref_siglip(x, y, math.exp(log_scale), bias), dtype=F64))


def test_siglip_logging_terms() -> None:
    x, y = unit_rows(5, 4, seed=23), unit_rows(5, 4, seed=24)
    s, b = 4.0, -1.0
    out = siglip_loss(x, y, torch.tensor(math.log(s), dtype=F64), torch.tensor(b, dtype=F64))
    logits = s * (x @ y.T) + b
    probs = torch.sigmoid(logits)
    eye = torch.eye(5, dtype=torch.bool)
    assert_close(out["pos_prob"], probs.diagonal().mean())
    assert_close(out["neg_prob"], probs[~eye].mean())
    assert out["acc"].item() == pytest.approx(sum(int(logits[i].argmax() == i) for i in range(5)) / 5)
    assert not any(out[k].requires_grad for k in ("acc", "pos_prob", "neg_prob"))


def test_siglip_known_values() -> None:
    zero = torch.tensor(0.0, dtype=F64)
    # all x_i.y_j = 0, scale e^0 = 1, bias 0: every pair gives log(1 + e^0) = log 2,
    # n * n pairs divided by n -> n log 2
    for n in (1, 3, 5):
        x, y = orthogonal_pairs(n, 2 * n)
        assert_close(siglip_loss(x, y, zero, zero)["loss"], torch.tensor(n * math.log(2), dtype=F64))
    # with a bias b: log(1 + e^-b) for the positive, (n - 1) log(1 + e^b) for the negatives
    n, b = 4, -2.5
    x, y = orthogonal_pairs(n, 2 * n)
    expected = math.log1p(math.exp(-b)) + (n - 1) * math.log1p(math.exp(b))
    assert_close(
        siglip_loss(x, y, zero, torch.tensor(b, dtype=F64))["loss"], torch.tensor(expected, dtype=F64)
    )


def test_siglip_stable_for_large_logits() -> None:
    x, y = unit_rows(4, 3, seed=25).float(), unit_rows(4, 3, seed=26).float()
    out = siglip_loss(x, y, torch.tensor(math.log(1e4)), torch.tensor(-50.0))
    assert torch.isfinite(out["loss"])


def test_siglip_gradients_reach_inputs_scale_and_bias() -> None:
    x = unit_rows(4, 3, seed=27).requires_grad_()
    y = unit_rows(4, 3, seed=28).requires_grad_()
    t = torch.tensor(0.7, dtype=F64, requires_grad=True)
    b = torch.tensor(-1.5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a)["loss"], (x, y, t, b))
    siglip_loss(x, y, t, b)["loss"].backward()
    for g in (x.grad, y.grad, t.grad, b.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # analytic d loss / d bias = -1/n * sum_ij z_ij * sigmoid(-z_ij * logit_ij)
    z = torch.eye(4, dtype=F64) * 2 - 1
    logits = (math.exp(0.7) * (x @ y.T) + -1.5).detach()
    assert_close(b.grad, -(z * torch.sigmoid(-z * logits)).sum() / 4)


def test_siglip_gather_single_process_is_identity() -> None:
    x, y = unit_rows(4, 5, seed=29), unit_rows(4, 5, seed=30)
    t, b = torch.tensor(1.0, dtype=F64), torch.tensor(-3.0, dtype=F64)
    assert_close(siglip_loss(x, y, t, b, gather=True)["loss"], siglip_loss(x, y, t, b)["loss"])


# ---------------------------------------------------------------- masked objectives


def random_mask(b: int, n: int, seed: int) -> torch.Tensor:
    mask = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[0, 0], mask[0, 1] = True, False  # at least one of each
    return mask


def test_masked_mse_matches_manual_formula() -> None:
    b, n, p = 2, 5, 3
    pred, target, mask = rand(b, n, p, seed=31), rand(b, n, p, seed=32), random_mask(b, n, seed=33)
    total, count = 0.0, 0
    for i in range(b):
        for j in range(n):
            if mask[i, j]:
                total += sum((float(pred[i, j, k]) - float(target[i, j, k])) ** 2 for k in range(p)) / p
                count += 1
    out = masked_mse(pred, target, mask)
    assert out.dim() == 0
    assert_close(out, torch.tensor(total / count, dtype=F64))


def test_masked_mse_ignores_unmasked_positions() -> None:
    pred = rand(2, 6, 4, seed=34).requires_grad_()
    target, mask = rand(2, 6, 4, seed=35), random_mask(2, 6, seed=36)
    base = masked_mse(pred, target, mask)
    base.backward()
    assert pred.grad is not None
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).any()
    noise = rand(2, 6, 4, seed=37) * 100 * (~mask).unsqueeze(-1)
    assert_close(masked_mse(pred.detach() + noise, target - noise, mask), base.detach(), rtol=0, atol=0)
    # changing a masked position does change the loss
    bump = torch.zeros_like(target)
    bump[0, 0] = 1.0
    assert masked_mse(pred.detach(), target + bump, mask).item() != pytest.approx(base.item())


def test_masked_mse_empty_mask_is_zero() -> None:
    pred = rand(2, 3, 4, seed=38).requires_grad_()
    out = masked_mse(pred, rand(2, 3, 4, seed=39), torch.zeros(2, 3, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


def test_masked_cross_entropy_matches_manual_softmax() -> None:
    b, n, v = 2, 6, 5
    logits = rand(b, n, v, seed=40)
    target = torch.randint(0, v, (b, n), generator=torch.Generator().manual_seed(41))
    mask = random_mask(b, n, seed=42)
    total, count, hits = 0.0, 0, 0
    for i in range(b):
        for j in range(n):
            if mask[i, j]:
                row = logits[i, j].tolist()
                log_z = math.log(sum(math.exp(s) for s in row))
                total += log_z - row[int(target[i, j])]
                hits += int(max(range(v), key=row.__getitem__) == int(target[i, j]))
                count += 1
    out = masked_cross_entropy(logits, target, mask)
    assert out.dim() == 0
    assert_close(out, torch.tensor(total / count, dtype=F64))
    assert masked_accuracy(logits, target, mask).item() == pytest.approx(hits / count)


def test_masked_cross_entropy_ignores_unmasked_positions() -> None:
    b, n, v = 3, 4, 7
    logits = rand(b, n, v, seed=43).requires_grad_()
    target = torch.randint(0, v, (b, n), generator=torch.Generator().manual_seed(44))
    mask = random_mask(b, n, seed=45)
    base = masked_cross_entropy(logits, target, mask)
    base.backward()
    assert logits.grad is not None
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()
    noisy_logits = logits.detach() + rand(b, n, v, seed=46) * 50 * (~mask).unsqueeze(-1)
    junk_target = target.masked_fill(~mask, -100)  # not even a valid class id
    assert_close(masked_cross_entropy(noisy_logits, junk_target, mask), base.detach(), rtol=0, atol=0)
    assert_close(masked_accuracy(noisy_logits, junk_target, mask), masked_accuracy(logits, target, mask))


def test_masked_cross_entropy_empty_mask_and_accuracy_known_value() -> None:
    logits = rand(1, 3, 4, seed=47).requires_grad_()
    target = torch.zeros(1, 3, dtype=torch.long)
    none = torch.zeros(1, 3, dtype=torch.bool)
    out = masked_cross_entropy(logits, target, none)
    assert out.item() == 0.0
    out.backward()
    assert masked_accuracy(logits, target, none).item() == 0.0
    # perfect predictions on masked positions, wrong ones elsewhere
    perfect = torch.full((1, 3, 4), -5.0)
    perfect[0, :, 2] = 5.0
    tgt = torch.tensor([[2, 2, 0]])
    assert masked_accuracy(perfect, tgt, torch.tensor([[True, True, False]])).item() == 1.0
    assert masked_accuracy(perfect, tgt, torch.tensor([[True, False, True]])).item() == 0.5


def test_masked_losses_validate_shapes() -> None:
    with pytest.raises(ValueError):
        masked_mse(rand(2, 3, 4, seed=0), rand(2, 3, 4, seed=1), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError):
        masked_mse(rand(2, 3, 4, seed=0), rand(2, 3, 4, seed=1), torch.ones(2, 3))
    with pytest.raises(ValueError):
        masked_cross_entropy(
            rand(2, 3, 4, seed=0), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)
        )


def test_normalized_patch_targets_matches_numpy() -> None:
    patches = rand(2, 5, 12, seed=48) * 4 + 3
    out = normalized_patch_targets(patches)
    arr = patches.numpy()
    mean = arr.mean(axis=-1, keepdims=True)
    var = arr.var(axis=-1, ddof=1, keepdims=True)  # unbiased, as torch's .var() in MAE
    assert_close(out, torch.from_numpy((arr - mean) / np.sqrt(var + 1e-6)))
    assert_close(out.mean(-1), torch.zeros(2, 5, dtype=F64), atol=1e-12, rtol=0)
    assert_close(out.var(-1), torch.ones(2, 5, dtype=F64), atol=1e-6, rtol=0)


def test_normalized_patch_targets_eps_and_constant_patch() -> None:
    const = torch.full((1, 2, 6), 7.0, dtype=F64)
    assert (normalized_patch_targets(const) == 0).all()
    patches = torch.tensor([[[0.0, 2.0]]], dtype=F64)  # mean 1, unbiased var 2
    eps = 0.25
    assert_close(
        normalized_patch_targets(patches, eps=eps),
        torch.tensor([[[-1.0, 1.0]]], dtype=F64) / math.sqrt(2.0 + eps),
    )
    assert (normalized_patch_targets(torch.ones(1, 2, 1)) == 0).all()


def test_zero_rows_give_zero_loss_attached_to_the_graph() -> None:
    """A process without pairs (partially paired data) contributes 0, but still through the autograd graph."""
    x = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    y = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    scale = torch.tensor(math.log(10.0), dtype=F64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=F64, requires_grad=True)
    for out in (clip_loss(x, y, scale), siglip_loss(x, y, scale, bias), info_nce(x, y, 0.1)):
        assert out["loss"].item() == 0.0 and out["loss"].requires_grad
        out["loss"].backward()
    assert scale.grad is not None and scale.grad.item() == 0.0
