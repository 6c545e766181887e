"""DINO multi-crop and last-layer freezing, Matryoshka losses and evaluation widths, JEPA block masks: each
checked against an independent computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from image_views import image_views_batch
from index_rows import IndexRows

from mmssl.batch import Batch
from mmssl.data.sources import Source
from mmssl.eval.base import EvalContext
from mmssl.eval.knn import KNNOptions, run_knn
from mmssl.eval.linear_probe import LinearProbeOptions, run_linear_probe
from mmssl.masking import block_masks
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import BuildInfo
from mmssl.objectives.functional import clip_loss
from mmssl.objectives.matryoshka import matryoshka_loss
from mmssl.train.step import StepContext
from mmssl_image import ImageOptions

IMAGE = ImageOptions(
    image_size=28, patch_size=7, channels=1, width=32, depth=1, heads=2, mean=[0.5], std=[0.25], encoder="vit"
)


def build(name: str, options: dict, processors: dict, batch: Batch) -> torch.nn.Module:
    kind = OBJECTIVES.get(name)
    opts = kind.options.model_validate({"name": name, **options})
    probe = {"image": batch.inputs["image"]["view0" if "view0" in batch.inputs["image"] else "clean"]}
    return kind.build(opts, BuildInfo({"image": 32}, 8, processors, probe))


# ---------------------------------------------------------------- DINO multi-crop

DINO = {"modality": "image", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "local_views": 2}


def test_dino_multi_crop_matches_the_pairwise_cross_entropy() -> None:
    views = ["view0", "view1", "local0", "local1"]
    model, processors, batch = image_views_batch(IMAGE, views, 5)
    assert batch.inputs["image"]["local0"].data.shape == (5, 1, 14, 14)  # 3/7 of 28 px in whole 7-px patches
    assert batch.inputs["image"]["view0"].data.shape == (5, 1, 28, 28)
    dino = build("dino", DINO, processors, batch).train()
    assert dino.inputs == [("image", v) for v in views]
    out = dino(StepContext(model, batch, processors))

    # Independent: the teacher starts as a copy of the student; it sees the two global views, the student all
    # four; the loss averages -sum q_i log p_j over the 2 x 3 pairs of different views.
    with torch.no_grad():
        logits = [dino.head(model.encode("image", batch.inputs["image"][v]).pooled) for v in views]
        q = [F.softmax(t / dino.teacher_temp, dim=-1) for t in logits[:2]]  # center starts at 0
        p = [F.log_softmax(s / dino.student_temp, dim=-1) for s in logits]
        pairs = [-(q[i] * p[j]).sum(-1).mean() for i in range(2) for j in range(4) if i != j]
    assert len(pairs) == 6
    assert out["loss"].item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-4)


def test_dino_last_layer_frozen_for_the_first_steps() -> None:
    model, processors, batch = image_views_batch(IMAGE, ["view0", "view1"], 5)
    dino = build("dino", {**DINO, "local_views": 0, "freeze_last_layer_steps": 1}, processors, batch).train()
    params = [p for p in [*model.parameters(), *dino.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    prototypes = dino.head.prototypes.detach().clone()
    first_layer = dino.head.mlp[0].weight.detach().clone()
    for step in (1, 2):
        optimizer.zero_grad()
        dino(StepContext(model, batch, processors))["loss"].backward()
        if step == 1:
            assert dino.head.prototypes.grad is not None and not dino.head.prototypes.grad.any()
        optimizer.step()
        dino.teacher.after_optimizer_step(model, step, 2)
        if step == 1:
            assert torch.equal(dino.head.prototypes, prototypes)  # frozen during step 1
            assert not torch.equal(dino.head.mlp[0].weight, first_layer)  # the rest of the head trains
    assert not torch.equal(dino.head.prototypes, prototypes)  # trains from step 2 on


def test_dino_local_views_need_the_capability() -> None:
    from mmssl.objectives.base import objective_requirements_error
    from mmssl_timeseries import plugin as series_plugin

    opts = OBJECTIVES.get("dino").options.model_validate({"name": "dino", **DINO, "modality": "s"})
    problems = objective_requirements_error(opts, {"s": series_plugin.capabilities}, {"s": "timeseries"}, {"s"})
    assert len(problems) == 1 and "local_views" in problems[0]


# ---------------------------------------------------------------- Matryoshka


def reference_clip(x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's symmetric cross entropy written out row by row."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    total = 0.0
    n = len(x)
    for i in range(n):
        row = torch.tensor([scale * float(x[i] @ y[j]) for j in range(n)])
        col = torch.tensor([scale * float(y[i] @ x[j]) for j in range(n)])
        total += -(row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * n)


def test_matryoshka_clip_averages_the_nested_prefixes() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    log_scale = torch.tensor(math.log(5.0))
    terms = matryoshka_loss(lambda a, b: clip_loss(a, b, log_scale), x, y, [2, 4])
    expected = {w: reference_clip(x[:, :w], y[:, :w], 5.0) for w in (2, 4, 8)}
    for w, value in expected.items():
        assert terms[f"loss@{w}"].item() == pytest.approx(value.item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx(sum(v.item() for v in expected.values()) / 3, rel=1e-4)
    assert "acc" in terms  # the full width's other terms are kept
    plain = matryoshka_loss(lambda a, b: clip_loss(a, b, log_scale), F.normalize(x, dim=-1), F.normalize(y, dim=-1), [])
    assert plain["loss"].item() == pytest.approx(expected[8].item(), rel=1e-4)
    with pytest.raises(ValueError, match="outside 1..8"):
        matryoshka_loss(lambda a, b: clip_loss(a, b, log_scale), x, y, [16])


def test_matryoshka_option_on_simclr() -> None:

    model, processors, batch = image_views_batch(IMAGE, ["view0", "view1"], 5)
    options = {"modality": "image", "proj_dim": 8, "hidden_dim": 16, "matryoshka": [2, 4]}
    simclr = build("simclr", options, processors, batch)
    out = simclr(StepContext(model, batch, processors))
    assert {"loss@2", "loss@4", "loss@8"} <= set(out)
    assert out["loss"].item() == pytest.approx((out["loss@2"] + out["loss@4"] + out["loss@8"]).item() / 3, rel=1e-5)
    with pytest.raises(ValueError, match="outside"):
        build("simclr", {"modality": "image", "proj_dim": 8, "matryoshka": [9]}, processors, batch)


# ---------------------------------------------------------------- JEPA block masks


@pytest.mark.parametrize("grid", [(6, 7), (20,)])
def test_block_masks_match_their_boxes(grid: tuple[int, ...]) -> None:
    masks = block_masks(4, grid, num_targets=3, generator=torch.Generator().manual_seed(0))
    rows, cols = (1, grid[0]) if len(grid) == 1 else grid
    n = rows * cols
    assert masks.target.shape == (4, n) and masks.keep.shape[0] == 4 and masks.keep.shape[1] >= 1
    for b in range(4):
        # Independent: paint the boxes cell by cell.
        target = torch.zeros(n, dtype=torch.bool)
        for top, left, h, w in masks.target_boxes[b]:
            assert 0 <= top and top + h <= rows and 0 <= left and left + w <= cols
            if len(grid) == 1:
                assert h == 1  # spans on a 1-D sequence
            area = h * w / n
            assert 0.15 * 0.5 <= area <= 0.2 * 2  # the target scale, up to rounding to whole tokens
            for r in range(top, top + h):
                for c in range(left, left + w):
                    target[r * cols + c] = True
        assert torch.equal(masks.target[b], target)
        top, left, h, w = masks.context_boxes[b]
        kept = masks.keep[b].tolist()
        assert kept == sorted(set(kept))
        for index in kept:
            r, c = divmod(index, cols)
            assert top <= r < top + h and left <= c < left + w  # inside the context block ...
            assert not target[index]  # ... and outside every target


def test_block_masks_keep_the_smallest_context_count() -> None:
    masks = block_masks(6, (8, 8), generator=torch.Generator().manual_seed(1))
    counts = []
    for b in range(6):
        top, left, h, w = masks.context_boxes[b]
        box = torch.zeros(8, 8, dtype=torch.bool)
        box[top : top + h, left : left + w] = True
        counts.append(int((box.flatten() & ~masks.target[b]).sum()))
    assert masks.keep.shape[1] == min(counts)


def test_data2vec_block_masking_predicts_the_target_blocks() -> None:
    model, processors, batch = image_views_batch(IMAGE, ["clean"], 5)
    options = {"modality": "image", "decoder_width": 16, "decoder_heads": 2, "top_k": 1, "num_masks": 1}
    d2v = build("data2vec", {**options, "masking": "block", "num_targets": 2}, processors, batch).train()
    torch.manual_seed(5)
    out = d2v(StepContext(model, batch, processors))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    assert model.encoders["image"].embedder.proj.weight.grad.abs().sum() > 0


class _Lookup(torch.nn.Module):
    """A model that looks each row's features up by its index (``IndexRows`` batches)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.embed_dim = features.shape[1]

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        rows = self.features[batch.data]
        return EncoderOutput(tokens=rows[:, None], pooled=rows)


def test_knn_and_probe_widths_score_the_first_features() -> None:
    """At width 2 only the first two features count: they hold the class, the rest is loud noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    angle = labels.float() * 2 * math.pi / 3  # three directions in the plane of the first two features
    signal = 3 * torch.stack([angle.cos(), angle.sin()], dim=1) + 0.1 * torch.randn(120, 2, generator=g)
    features = torch.cat([signal, 50 * torch.randn(120, 6, generator=g)], dim=1)
    rows = {"train": list(range(80)), "test": list(range(80, 120))}
    sources = {s: Source([{"x": i, "label": int(labels[i])} for i in idx]) for s, idx in rows.items()}
    ctx = EvalContext(_Lookup(features), {"m": IndexRows()}, {"m": "x"}, sources.__getitem__, lambda: None)
    knn = run_knn(KNNOptions(name="knn", modality="m", k=5, widths=[2], baselines=[]), ctx)
    probe = run_linear_probe(LinearProbeOptions(name="linear_probe", modality="m", widths=[2], baselines=[]), ctx)
    assert knn["knn_top1@2"] == 1.0
    assert knn["knn_top1"] < 0.8  # the full width is dominated by the noise
    assert probe["linear_probe_top1@2"] == 1.0


def test_block_masking_is_refused_at_validate_for_replace_style_masks() -> None:
    from mmssl.objectives.base import objective_requirements_error
    from mmssl_text import plugin as text_plugin

    opts = OBJECTIVES.get("data2vec").options.model_validate({"name": "data2vec", "modality": "t", "masking": "block"})
    problems = objective_requirements_error(opts, {"t": text_plugin.capabilities}, {"t": "text"}, {"t"})
    assert len(problems) == 1 and "masking continuous" in problems[0]
    random = opts.model_copy(update={"masking": "random"})
    assert objective_requirements_error(random, {"t": text_plugin.capabilities}, {"t": "text"}, {"t"}) == []
