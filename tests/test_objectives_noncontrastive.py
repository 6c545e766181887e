"""Non-contrastive objectives: each loss against an independent implementation of its published formula, and the
EMA-teacher objectives (BYOL, DINO, data2vec) for where gradients go, the EMA and center updates and checkpointing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_views import image_views_batch
from tolerances import F32
from torch import nn
from torch.testing import assert_close
from torchrun import run_two_processes

from mmssl.batch import Batch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import BuildInfo
from mmssl.objectives.distillation import DINOHead
from mmssl.objectives.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    data2vec_targets,
    dino_center_update,
    dino_loss,
    ema_momentum,
    instance_norm_tokens,
    koleo_loss,
    off_diagonal,
    vicreg_loss,
)
from mmssl.objectives.teacher import EMATeacher, ema_update
from mmssl.train.step import StepContext
from mmssl_image import ImageOptions

F64 = torch.float64


def rand(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- reference computations (numpy, explicit loops)


def ref_barlow(a: torch.Tensor, b: torch.Tensor, lam: float, eps: float = 1e-5) -> tuple[float, float, float]:
    """Zbontar et al. 2021, Algorithm 1: c = bn(z_a).T @ bn(z_b) / N; sum (1 - c_ii)^2 + lam sum_{i!=j} c_ij^2."""
    a, b = a.detach().numpy(), b.detach().numpy()
    n, d = a.shape

    def bn(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for j in range(d):
            col = z[:, j]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n  # BatchNorm1d: biased variance
            out[:, j] = (col - mean) / math.sqrt(var + eps)
        return out

    an, bn_ = bn(a), bn(b)
    on, off = 0.0, 0.0
    for i in range(d):
        for j in range(d):
            c = sum(an[k, i] * bn_[k, j] for k in range(n)) / n
            if i == j:
                on += (1 - c) ** 2
            else:
                off += c**2
    return on + lam * off, on, off


def ref_vicreg(a: torch.Tensor, b: torch.Tensor, sim: float, var: float, cov: float, eps: float = 1e-4) -> dict:
    """Bardes et al. 2022, Algorithm 1 (reference code), written out with loops."""
    a, b = a.detach().numpy(), b.detach().numpy()
    n, d = a.shape
    inv = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def std_term(z: np.ndarray) -> float:
        total = 0.0
        for j in range(d):
            mean = z[:, j].mean()
            v = sum((x - mean) ** 2 for x in z[:, j]) / (n - 1)
            total += max(0.0, 1 - math.sqrt(v + eps))
        return total / d

    def cov_term(z: np.ndarray) -> float:
        zc = z - z.mean(axis=0)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += (sum(zc[k, i] * zc[k, j] for k in range(n)) / (n - 1)) ** 2
        return total / d

    v = std_term(a) / 2 + std_term(b) / 2
    c = cov_term(a) + cov_term(b)
    return {"loss": sim * inv + var * v + cov * c, "invariance": inv, "variance": v, "covariance": c}


def ref_dino(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, tps: float, tpt: float):
    """Caron et al. 2021, Algorithm 1: H(t, s) = -(t * log s).sum(1).mean() over pairs of different crops."""

    def softmax(row: list[float]) -> list[float]:
        top = max(row)
        e = [math.exp(x - top) for x in row]
        return [x / sum(e) for x in e]

    c = center.reshape(-1).tolist()
    total, pairs = 0.0, 0
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            h = 0.0
            for trow, srow in zip(t.tolist(), s.tolist(), strict=True):
                q = softmax([(x - ck) / tpt for x, ck in zip(trow, c, strict=True)])
                p = softmax([x / tps for x in srow])
                h += -sum(qk * math.log(pk) for qk, pk in zip(q, p, strict=True))
            total += h / len(t)
            pairs += 1
    return total / pairs


# ---------------------------------------------------------------- Barlow Twins


def test_off_diagonal() -> None:
    m = torch.arange(16.0).view(4, 4)
    expected = [m[i, j].item() for i in range(4) for j in range(4) if i != j]
    assert off_diagonal(m).tolist() == expected


@pytest.mark.parametrize(("n", "d", "lam"), [(2, 3, 5e-3), (6, 4, 5e-3), (8, 5, 0.5)])
def test_barlow_matches_loop_reference(n: int, d: int, lam: float) -> None:
    a, b = rand(n, d, seed=1) * 3 + 1, rand(n, d, seed=2) * 0.5 - 2
    out = barlow_twins_loss(a, b, lam)
    loss, on, off = ref_barlow(a, b, lam)
    assert_close(out["loss"], torch.tensor(loss, dtype=F64))
    assert_close(out["on_diag"], torch.tensor(on, dtype=F64))
    assert_close(out["off_diag"], torch.tensor(off, dtype=F64))


def test_barlow_known_values() -> None:
    # Identical views with decorrelated standardised columns: c = I (up to eps), loss ~ 0.
    z = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=F64)
    assert barlow_twins_loss(z, z.clone())["loss"].item() < 1e-8
    # Anti-correlated views: c = -I, on-diagonal (1 - (-1))^2 = 4 per dimension.
    assert_close(barlow_twins_loss(z, -z)["on_diag"], torch.tensor(12.0, dtype=F64), rtol=1e-4, atol=0)


def test_barlow_gradients_and_gather_identity() -> None:
    a, b = rand(5, 3, seed=3).requires_grad_(), rand(5, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: barlow_twins_loss(x, y, 0.1)["loss"], (a, b))
    assert_close(barlow_twins_loss(a, b, gather=True)["loss"], barlow_twins_loss(a, b)["loss"])
    with pytest.raises(ValueError):
        barlow_twins_loss(rand(3, 2, seed=0), rand(3, 3, seed=0))


# ---------------------------------------------------------------- VICReg


@pytest.mark.parametrize(("n", "d", "weights"), [(3, 2, (25, 25, 1)), (6, 4, (25, 25, 1)), (5, 5, (1.0, 2.0, 0.5))])
def test_vicreg_matches_loop_reference(n: int, d: int, weights: tuple[float, float, float]) -> None:
    a, b = rand(n, d, seed=5) * 0.7, rand(n, d, seed=6) * 1.5 + 0.3
    out = vicreg_loss(a, b, *weights)
    ref = ref_vicreg(a, b, *weights)
    for key in ("loss", "invariance", "variance", "covariance"):
        assert_close(out[key], torch.tensor(ref[key], dtype=F64), msg=key)


def test_vicreg_known_values() -> None:
    a, b = rand(6, 4, seed=7), rand(6, 4, seed=8)
    # Only invariance: sim_weight * MSE.
    assert_close(vicreg_loss(a, b, 25, 0, 0)["loss"], 25 * F.mse_loss(a, b))
    # Collapsed branches (every row equal): std = sqrt(eps), variance term 1 - sqrt(eps), no covariance.
    const = torch.ones(5, 3, dtype=F64) * 2
    out = vicreg_loss(const, const.clone())
    assert_close(out["variance"], torch.tensor(1 - math.sqrt(1e-4), dtype=F64))
    assert out["covariance"].item() == 0 and out["invariance"].item() == 0
    # Large decorrelated columns (std >= 1): no variance penalty.
    z = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=F64) * 3
    spread = vicreg_loss(z, z.clone())
    assert spread["variance"].item() == 0 and spread["covariance"].item() < 1e-20 and spread["loss"].item() < 1e-20


def test_vicreg_gradients() -> None:
    a, b = rand(5, 3, seed=9).requires_grad_(), rand(5, 3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: vicreg_loss(x, y, 1.0, 1.0, 1.0)["loss"], (a, b))
    assert_close(vicreg_loss(a, b, gather=True)["loss"], vicreg_loss(a, b)["loss"])
    with pytest.raises(ValueError):
        vicreg_loss(rand(1, 3, seed=0), rand(1, 3, seed=1))


# ---------------------------------------------------------------- BYOL


def test_byol_matches_formula_and_stops_target_gradient() -> None:
    p, z = rand(5, 4, seed=11).requires_grad_(), rand(5, 4, seed=12).requires_grad_()
    out = byol_loss(p, z)
    ref = 0.0
    for pr, zr in zip(p.tolist(), z.tolist(), strict=True):
        pn, zn = math.sqrt(sum(x * x for x in pr)), math.sqrt(sum(x * x for x in zr))
        ref += 2 - 2 * sum(x * y for x, y in zip(pr, zr, strict=True)) / (pn * zn)
    assert_close(out["loss"], torch.tensor(ref / 5, dtype=F64))
    # BYOL's identity: 2 - 2 cos = || p/|p| - z/|z| ||^2.
    assert_close(out["loss"], (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1).mean())
    out["loss"].backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None  # the target gets no gradient
    assert byol_loss(p.detach(), p.detach() * 3)["loss"].item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(p.detach(), -p.detach())["loss"].item() == pytest.approx(4.0)


# ---------------------------------------------------------------- DINO


@pytest.mark.parametrize(("views", "k"), [(2, 5), (3, 4), (4, 6)])
def test_dino_matches_paper_pseudo_code(views: int, k: int) -> None:
    student = [rand(3, k, seed=20 + i) for i in range(views)]
    teacher = [rand(3, k, seed=40 + i) for i in range(2)]
    center = rand(1, k, seed=60) * 0.3
    out = dino_loss(student, teacher, center, 0.1, 0.04)
    assert_close(out["loss"], torch.tensor(ref_dino(student, teacher, center, 0.1, 0.04), dtype=F64))
    q = [F.softmax((t - center) / 0.04, dim=-1) for t in teacher]
    entropy = sum(-(qi * qi.log()).sum(-1).mean() for qi in q) / 2
    assert_close(out["teacher_entropy"], entropy)


def test_dino_gradients_reach_student_only() -> None:
    student = [rand(4, 6, seed=70 + i).requires_grad_() for i in range(3)]
    teacher = [rand(4, 6, seed=80 + i).requires_grad_() for i in range(2)]
    center = torch.zeros(1, 6, dtype=F64, requires_grad=True)
    dino_loss(student, teacher, center)["loss"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher) and center.grad is None
    assert torch.autograd.gradcheck(
        lambda a, b, c: dino_loss([a, b, c], [t.detach() for t in teacher], center.detach(), 0.5, 0.3)["loss"],
        tuple(s.detach().clone().requires_grad_() for s in student),
    )


def test_dino_center_update_formula() -> None:
    center = rand(1, 5, seed=90)
    teacher = [rand(4, 5, seed=91), rand(4, 5, seed=92)]
    rows = torch.cat(teacher)
    mean = [sum(rows[r, j].item() for r in range(8)) / 8 for j in range(5)]
    expected = torch.tensor([[0.9 * center[0, j].item() + 0.1 * mean[j] for j in range(5)]], dtype=F64)
    assert_close(dino_center_update(center, teacher, 0.9), expected)


def test_ema_momentum_schedule() -> None:
    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    for k in (10, 37, 81):  # BYOL: 1 - (1 - base) (cos(pi k / K) + 1) / 2
        assert ema_momentum(k, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi * k / 100) + 1) / 2)


# ---------------------------------------------------------------- data2vec targets


def test_data2vec_targets_match_instance_and_layer_norm() -> None:
    layers = [rand(2, 5, 4, seed=100 + i, dtype=torch.float32) * (i + 1) + i for i in range(4)]
    out = data2vec_targets(layers, top_k=3)
    # Independent: torch's instance_norm over the token axis ([B, C, L] layout), average, layer_norm.
    normed = [F.instance_norm(x.transpose(1, 2)).transpose(1, 2) for x in layers[1:]]
    avg = sum(normed) / 3
    assert_close(out, F.layer_norm(avg, (4,)))
    # And with numpy for one (sample, token).
    arr = [x.numpy() for x in layers[1:]]
    inst = [(x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) for x in arr]
    v = sum(i[1, 2] for i in inst) / 3
    expected = (v - v.mean()) / np.sqrt(v.var() + 1e-5)
    assert_close(out[1, 2], torch.from_numpy(expected).float(), rtol=1e-4, atol=1e-5)
    assert data2vec_targets(layers, top_k=10).shape == (2, 5, 4)  # more than there are: all of them
    assert_close(
        data2vec_targets(layers, 1), F.layer_norm(F.instance_norm(layers[-1].transpose(1, 2)).transpose(1, 2), (4,))
    )


def test_instance_norm_ignores_padding() -> None:
    x = rand(2, 6, 3, seed=110)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    out = instance_norm_tokens(x, padding)
    assert_close(out[0, :4], instance_norm_tokens(x[:1, :4])[0])
    assert (out[0, 4:] == 0).all()
    assert_close(out[1], instance_norm_tokens(x[1:])[0])


# ---------------------------------------------------------------- the EMA teacher


def test_ema_update_formula_and_buffers() -> None:
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher({"net": student}, base_momentum=0.9)
    before = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(0.5)
    teacher.update({"net": student}, 0.9)
    for name, p in student.named_parameters():
        assert_close(teacher.net.get_parameter(name), 0.9 * before[name] + 0.1 * p.detach())
    assert_close(teacher.net[1].running_mean, torch.full((4,), 0.5))
    assert int(teacher.steps) == 1 and teacher.momentum.item() == pytest.approx(0.9)
    assert all(not p.requires_grad for p in teacher.parameters())
    # Teacher mode: dropout off even in train(), BatchNorm on batch statistics in train().
    teacher.train()
    assert teacher.net[1].training and not teacher.net[0].training
    teacher.eval()
    assert not teacher.net[1].training
    with pytest.raises(ValueError):
        ema_update(nn.Linear(3, 4), nn.Linear(3, 5, bias=False), 0.5)


# ---------------------------------------------------------------- objective modules on a real encoder

IMAGE = ImageOptions(
    image_size=28, patch_size=7, channels=1, width=32, depth=2, heads=2, mean=[0.5], std=[0.25], encoder="vit"
)
ROWS = 6


def build(name: str, options: dict, model: JointEmbeddingModel, processors: dict, batch: Batch) -> nn.Module:
    kind = OBJECTIVES.get(name)
    opts = kind.options.model_validate({"name": name, **options})
    probe = {"image": batch.inputs["image"][next(iter(batch.inputs["image"]))]}
    info = BuildInfo({"image": 32}, 8, processors, probe)
    return kind.build(opts, info)


TEACHER_CASES = [
    ("byol", {"modality": "image", "proj_dim": 8, "hidden_dim": 16, "pred_hidden_dim": 16}, ["view0", "view1"]),
    ("dino", {"modality": "image", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "num_views": 3}, None),
    ("data2vec", {"modality": "image", "decoder_width": 16, "decoder_heads": 2, "top_k": 2}, ["clean"]),
    (
        "dino",
        {"modality": "image", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "head_batch_norm": True},
        ["view0", "view1"],
    ),
]
TEACHER_IDS = ["byol", "dino", "data2vec", "dino_head_batch_norm"]


@pytest.mark.parametrize(("name", "options", "views"), TEACHER_CASES, ids=TEACHER_IDS)
def test_teacher_objectives_gradients_and_ema(name: str, options: dict, views: list[str] | None) -> None:
    views = views or ["view0", "view1", "view2"]
    model, processors, batch = image_views_batch(IMAGE, views, ROWS)
    objective = build(name, options, model, processors, batch)
    objective.train()
    out = objective(StepContext(model, batch, processors))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    teacher = objective.teacher
    teacher_params = list(teacher.named_parameters())
    assert teacher_params and any(n.startswith("encoder.") for n, _ in teacher_params)
    assert all(p.grad is None and not p.requires_grad for _, p in teacher_params)
    encoder = model.encoders["image"]
    assert all(p.grad is not None for p in encoder.transformer.parameters())
    own = [p for n, p in objective.named_parameters() if not n.startswith("teacher.")]
    assert own and all(p.grad is not None for p in own)
    # The teacher starts as an exact copy of the encoder ...
    for (n, t), s in zip(teacher.encoder.named_parameters(), encoder.parameters(), strict=True):
        assert torch.equal(t, s), n
    # ... and after an optimizer step follows it with the scheduled momentum.
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p))
    old = {n: p.clone() for n, p in teacher.encoder.named_parameters()}
    objective.teacher.after_optimizer_step(model, 1, 10)
    m = ema_momentum(0, 10, 0.996)
    for (n, t), s in zip(teacher.encoder.named_parameters(), encoder.parameters(), strict=True):
        assert_close(t, m * old[n] + (1 - m) * s.detach(), msg=n)
    assert int(teacher.steps) == 1


@pytest.mark.parametrize(("name", "options", "views"), TEACHER_CASES, ids=TEACHER_IDS)
def test_teacher_state_round_trips_through_a_state_dict(name: str, options: dict, views: list[str] | None) -> None:
    """A fresh objective loading a checkpointed state dict has the checkpoint's teacher, not a copy of its student."""
    views = views or ["view0", "view1", "view2"]
    model, processors, batch = image_views_batch(IMAGE, views, ROWS)
    first = build(name, options, model, processors, batch)
    first(StepContext(model, batch, processors))
    with torch.no_grad():
        for p in model.encoders["image"].parameters():
            p.mul_(0.5)
    first.teacher.after_optimizer_step(model, 1, 10)
    state = first.state_dict()
    assert any(k.startswith("teacher.encoder.") for k in state)

    second = build(name, options, model, processors, batch)
    missing, unexpected = second.load_state_dict(state, strict=False)
    assert missing == [] and unexpected == []
    second.eval()  # no BatchNorm statistics or DINO center updates in this forward
    second(StepContext(model, batch, processors))  # makes the encoder copy, from the loaded weights
    for key, value in second.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_dino_center_buffer_and_temperature_warmup() -> None:
    views = ["view0", "view1"]
    model, processors, batch = image_views_batch(IMAGE, views, ROWS)
    options = {
        "modality": "image",
        "out_dim": 16,
        "hidden_dim": 16,
        "bottleneck_dim": 8,
        "warmup_teacher_temp": 0.02,
        "teacher_temp": 0.06,
        "warmup_teacher_temp_steps": 4,
    }
    dino = build("dino", options, model, processors, batch)
    assert dino.center.shape == (1, 16) and "center" in dino.state_dict()
    with torch.no_grad():
        dino.center.fill_(0.25)
    ctx = StepContext(model, batch, processors)
    out = dino(ctx)
    with torch.no_grad():
        t_enc = dino.teacher.encoder
        teacher = [dino.teacher.head(t_enc(batch.inputs["image"][v]).pooled) for v in views]
    mean = torch.cat(teacher).mean(0, keepdim=True)
    assert_close(dino.center, 0.9 * torch.full((1, 16), 0.25) + 0.1 * mean)
    assert out["teacher_temp"].item() == pytest.approx(0.02)
    for step in range(1, 3):
        dino.teacher.after_optimizer_step(model, step, 10)
    assert dino.teacher_temperature() == pytest.approx(0.02 + 0.04 * 2 / 4)
    frozen = dino.center.clone()
    dino.eval()
    dino(StepContext(model, batch, processors))
    assert torch.equal(dino.center, frozen)  # eval: no center update


def test_koleo_matches_nearest_neighbour_loop_and_known_value() -> None:
    x = rand(7, 5, seed=11)
    unit = [row / math.sqrt(float((row**2).sum())) for row in x]
    nearest = [min(float(((unit[i] - unit[j]) ** 2).sum()) ** 0.5 for j in range(7) if j != i) for i in range(7)]
    expected = -sum(math.log(d + 1e-8) for d in nearest) / 7
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-5)
    # Two orthogonal rows are sqrt(2) apart whatever their lengths: -log(sqrt(2)).
    assert koleo_loss(torch.tensor([[3.0, 0.0], [0.0, 0.5]])).item() == pytest.approx(-0.5 * math.log(2), rel=1e-6)
    spread = koleo_loss(torch.eye(4))  # orthogonal rows, sqrt(2) apart
    close = koleo_loss(torch.eye(4) + 2.0)  # the same rows pulled towards (1, 1, 1, 1): closer on the sphere
    assert close > spread
    # A row repeated in the batch (distance 0) gives a finite loss and a finite gradient, not NaN.
    repeated = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = koleo_loss(repeated)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(repeated.grad).all()
    with pytest.raises(ValueError, match="n >= 2"):
        koleo_loss(torch.ones(1, 3))


def test_koleo_objective_sums_each_views_koleo_and_combines_with_dino() -> None:
    """``koleo`` beside ``dino`` (DINOv2's pairing): its loss is the sum over its views of the KoLeo of the pooled
    embeddings, and it reads the views the step context has already encoded."""
    views = ["view0", "view1"]
    model, processors, batch = image_views_batch(IMAGE, views, ROWS)
    koleo = build("koleo", {"modality": "image", "views": views}, model, processors, batch)
    ctx = StepContext(model, batch, processors)
    dino_options = {"modality": "image", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8}
    build("dino", dino_options, model, processors, batch)(ctx)
    encoded = {v: ctx.encode("image", v) for v in views}
    out = koleo(ctx)
    assert all(ctx.encode("image", v) is encoded[v] for v in views)  # no second forward pass
    with torch.no_grad():
        pooled = [model.encode("image", batch.inputs["image"][v]).pooled for v in views]
    assert_close(out["loss"].detach(), sum(koleo_loss(p) for p in pooled), **F32)
    out["loss"].backward()
    assert model.encoders["image"].transformer.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_koleo_objective_adds_zero_for_a_one_row_batch() -> None:
    """The last batch of an epoch can hold one row, which has no nearest neighbour: the term is zero there, and
    the encoder still gets a (zero) gradient instead of the step raising."""
    model, processors, batch = image_views_batch(IMAGE, ["view0", "view1"], 1)
    koleo = build("koleo", {"modality": "image"}, model, processors, batch)
    out = koleo(StepContext(model, batch, processors))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    grad = model.encoders["image"].transformer.blocks[0].attn.qkv.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0


def test_dino_head_batch_norm_matches_linear_bn_gelu() -> None:
    """With ``head_batch_norm`` each hidden layer is Linear, batch standardisation (biased variance), GELU."""
    torch.manual_seed(0)
    dino_head = DINOHead(6, 10, 12, 4, layers=3, batch_norm=True).double().train()
    x = rand(9, 6, seed=3)
    linears = [m for m in dino_head.mlp if isinstance(m, nn.Linear)]
    h = x
    for linear in linears[:-1]:
        h = h @ linear.weight.T + linear.bias
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    h = h @ linears[-1].weight.T + linears[-1].bias
    h = h / h.norm(dim=1, keepdim=True)
    prototypes = dino_head.prototypes / dino_head.prototypes.norm(dim=1, keepdim=True)
    assert_close(dino_head(x), h @ prototypes.T)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in dino_head.mlp) == 2


def test_byol_without_predictor_and_symmetric_loss() -> None:
    model, processors, batch = image_views_batch(IMAGE, ["view0", "view1"], ROWS)
    byol = build(
        "byol", {"modality": "image", "proj_dim": 8, "hidden_dim": 16, "predictor": False}, model, processors, batch
    )
    assert isinstance(byol.predictor, nn.Identity)
    byol.eval()
    out = byol(StepContext(model, batch, processors))
    # At step 0 the teacher equals the student, so without predictor each direction is 2 - 2 cos(z1, z2).
    with torch.no_grad():
        z = [byol.projector(model.encode("image", batch.inputs["image"][v]).pooled) for v in ("view0", "view1")]
    expected = 2 * (2 - 2 * F.cosine_similarity(z[0], z[1], dim=-1)).mean()
    assert_close(out["loss"], expected, **F32)


# ---------------------------------------------------------------- two processes (gloo, CPU)


def test_two_process_full_batch_statistics(tmp_path: Path) -> None:
    """Barlow Twins / VICReg with gather on 3 + 5 rows, DDP-averaged == the single-process full batch; DINO center."""
    script = Path(__file__).resolve().parent / "dist_scripts" / "noncontrastive_gather.py"
    code, output = run_two_processes([str(script), str(tmp_path)], timeout=180)
    assert code == 0, output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [], output
    for name in ("barlow_twins", "vicreg"):
        assert report[name]["loss_diff"] < 1e-5 and report[name]["grad_diff"] < 1e-5, (name, output)
        assert report[name]["grad_norm"] > 1e-3
    assert report["center_diff"] < 1e-6
