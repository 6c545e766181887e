"""Label-free monitors: RankMe, alignment, uniformity and std on known inputs; the training monitor's wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerances import F32
from torch.testing import assert_close

from mmssl.compiler import compile_recipe
from mmssl.eval.monitors import (
    TrainingMonitor,
    alignment,
    collapse_warnings,
    embedding_metrics,
    normalized_std,
    rankme,
    uniformity,
)

F64 = torch.float64


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- RankMe


@pytest.mark.parametrize("d", [1, 4, 16])
def test_rankme_identity_is_full_rank(d: int) -> None:
    assert rankme(torch.eye(d)).item() == pytest.approx(d, rel=1e-5)
    assert rankme(5 * torch.eye(d)).item() == pytest.approx(d, rel=1e-5)  # scale-invariant


def test_rankme_rank_one_and_known_spectrum() -> None:
    u, v = rand(50, 1, seed=1), rand(1, 8, seed=2)
    assert rankme(u @ v).item() == pytest.approx(1.0, abs=1e-4)
    # A known spectrum: Q diag(s) R has singular values s; RankMe = exp(entropy of s / sum(s)).
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(7, 5)))
    r, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    x = torch.from_numpy(q @ np.diag(s) @ r)
    p = s / s.sum() + 1e-7
    assert rankme(x).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert rankme(torch.zeros(3, 4)).item() == 1.0


# ---------------------------------------------------------------- alignment and uniformity


def test_alignment_known_values() -> None:
    x = rand(6, 4, seed=3)
    assert alignment(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(x, -x).item() == pytest.approx(4.0, rel=1e-6)  # ||2 u||^2
    e = torch.eye(4)
    assert alignment(e[:2], e[2:]).item() == pytest.approx(2.0)  # orthogonal: ||u - v||^2 = 2
    assert alignment(e[:2], e[2:], alpha=1).item() == pytest.approx(math.sqrt(2))


def test_uniformity_known_values_and_loop_reference() -> None:
    same = torch.ones(5, 3)
    assert uniformity(same).item() == pytest.approx(0.0, abs=1e-6)  # collapsed: every distance 0
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal).item() == pytest.approx(-8.0)  # log exp(-2 * 4)
    assert uniformity(torch.eye(6)).item() == pytest.approx(-4.0)  # every squared distance 2
    x = rand(7, 3, seed=4)
    u = (x / x.norm(dim=1, keepdim=True)).tolist()
    terms = [
        math.exp(-2 * sum((a - b) ** 2 for a, b in zip(u[i], u[j], strict=True)))
        for i in range(7)
        for j in range(i + 1, 7)
    ]
    assert uniformity(x).item() == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-5)


def test_normalized_std() -> None:
    assert normalized_std(torch.ones(4, 3) * 2).item() == 0.0
    # +-e_i: each dimension holds +1, -1 and 2d - 2 zeros (unbiased std), identical for every dimension.
    d = 4
    x = torch.cat([torch.eye(d), -torch.eye(d)])
    assert normalized_std(x).item() == pytest.approx(math.sqrt(2 / (2 * d - 1)))
    # Gaussian directions: about 1/sqrt(d).
    assert normalized_std(rand(4000, 16, seed=5)).item() == pytest.approx(0.25, rel=0.03)


def test_collapse_warnings_thresholds() -> None:
    d, n = 64, 512
    healthy = embedding_metrics(rand(n, d, seed=6))
    assert healthy["rankme"] > 40 and collapse_warnings(healthy, d) == []
    point = embedding_metrics(torch.ones(n, d) + 1e-6 * rand(n, d, seed=7))
    lines = collapse_warnings(point, d)
    assert len(lines) == 2 and "collapsed" in lines[0] and "RankMe" in lines[1]
    # Dimensional collapse only: spread along one direction (std fine, rank ~1).
    line = rand(n, 1, seed=8) @ rand(1, d, seed=9)
    found = embedding_metrics(line)
    assert found["rankme"] < 1.5 and [w for w in collapse_warnings(found, d) if "RankMe" in w]
    # The thresholds, exactly.
    assert collapse_warnings({"std": 0.099 / math.sqrt(d)}, d) and not collapse_warnings({"std": 0.101 / 8}, d)
    floor = 0.01 * min(10_000, 1000)  # 1% of min(n, d) = 10 > 1.5
    assert collapse_warnings({"rankme": floor - 0.1, "rows": 10_000}, 1000)
    assert not collapse_warnings({"rankme": floor + 0.1, "rows": 10_000}, 1000)


# ---------------------------------------------------------------- the training monitor


def tiny_tree(objectives: list[dict], **train: object) -> dict:
    return {
        "name": "monitor_test",
        "seed": 1,
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 128}},
        "modalities": {
            "image": {
                "options": {
                    "image_size": 28,
                    "encoder": "vit",  # the collapse check reads the transformer's final norm
                    "patch_size": 7,
                    "channels": 1,
                    "width": 32,
                    "depth": 1,
                    "heads": 2,
                    "stats_samples": 128,
                }
            }
        },
        "model": {"embed_dim": 16},
        "objectives": objectives,
        "train": {"steps": 4, "batch_size": 16, "log_every": 2, **train},
    }


def test_monitor_leaves_rng_and_mode_alone() -> None:
    from mmssl.build import build_model, build_processors, load_source

    plan = compile_recipe(tiny_tree([{"name": "simclr", "modality": "image"}]))
    source = load_source(plan, "train")
    processors = build_processors(plan, source)
    model = build_model(plan, processors).train()
    monitor = TrainingMonitor(processors, {"image": "image"}, source.rows, 40, {"image": True}, seed=0)
    assert len(monitor.index["image"]) == 40
    rng = torch.get_rng_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = monitor.measure(model)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    second, _ = monitor.measure(model)
    assert first == second  # a fixed held batch and fixed views
    assert set(first) == {f"monitor/image/{k}" for k in ("rankme", "uniformity", "std", "alignment", "collapse")}
    # The numbers are those of the functions on the encoder's pooled clean embeddings.
    model.eval()
    with torch.no_grad():
        pooled = model.encode("image", monitor.batches["image"]["clean"][0]).pooled
    assert first["monitor/image/rankme"] == pytest.approx(rankme(pooled).item(), rel=1e-4)
    assert_close(torch.tensor(first["monitor/image/std"]), normalized_std(pooled), **F32)


def collapse_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the trainer's image encoder output one constant vector: zero and freeze its final LayerNorm weight."""
    import mmssl.train.trainer as trainer

    real = trainer.build_model

    def build_collapsed(plan, processors):
        model = real(plan, processors)
        norm = model.encoders["image"].transformer.norm
        with torch.no_grad():
            norm.weight.zero_()
            norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
        norm.weight.requires_grad_(False)
        return model

    monkeypatch.setattr(trainer, "build_model", build_collapsed)


def read_metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_collapsed_run_is_flagged_in_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose encoder outputs one point (BYOL without predictor on top) gets collapse warnings logged.

    Within the seconds a test may take, no objective drove the tiny ViT's pooled output itself to collapse (the
    projector/expander collapses first), so the collapse is built into the real model: the encoder's final
    LayerNorm weight is zeroed and frozen, so every row's pooled embedding is the LayerNorm bias.
    """
    from mmssl.train.trainer import train

    collapse_encoder(monkeypatch)
    byol = {"name": "byol", "modality": "image", "proj_dim": 8, "hidden_dim": 16, "predictor": False}
    plan = compile_recipe(tiny_tree([byol], monitor_every=3, monitor_rows=64, steps=6))
    train(plan, tmp_path / "collapsed")
    records = read_metrics(tmp_path / "collapsed")
    assert sorted(records) == [2, 3, 4, 6]  # log_every 2, plus the monitor step 3
    for step in (3, 6):
        assert records[step]["monitor/image/collapse"] == 1.0
        assert records[step]["monitor/image/std"] < 1e-6
        assert records[step]["monitor/image/rankme"] == pytest.approx(1.0, abs=1e-3)
        assert records[step]["monitor/image/uniformity"] == pytest.approx(0.0, abs=1e-5)
    assert "monitor/image/rankme" not in records[2]
    out = capsys.readouterr()
    assert "WARNING step 3: image: embeddings collapsed" in out.out + out.err
    assert "dimensional collapse: RankMe" in out.out + out.err


def test_healthy_run_is_not_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmssl.train.trainer import train

    simclr = {"name": "simclr", "modality": "image", "proj_dim": 16, "hidden_dim": 32}
    plan = compile_recipe(tiny_tree([simclr], monitor_every=4, monitor_rows=128, lr=2e-3))
    train(plan, tmp_path / "healthy")
    record = read_metrics(tmp_path / "healthy")[4]
    assert record["monitor/image/collapse"] == 0.0
    assert record["monitor/image/std"] > 0.1 / math.sqrt(32)
    assert record["monitor/image/rankme"] > 1.5
    assert 0.0 < record["monitor/image/alignment"] < 4.0 and record["monitor/image/uniformity"] < 0
    assert "WARNING" not in capsys.readouterr().out
