"""Identical inputs as positives in CLIP and SigLIP (``positives: identical``), against loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mmssl.modality import ModalityBatch
from mmssl.objectives.alignment import paired_content_ids
from mmssl.objectives.functional import clip_loss, content_ids, siglip_loss

F64 = torch.float64


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64), dim=-1)


def positives(ids_x: list[int], ids_y: list[int]) -> list[list[bool]]:
    n = len(ids_x)
    return [[i == j or ids_x[i] == ids_x[j] or ids_y[i] == ids_y[j] for j in range(n)] for i in range(n)]


def ref_multi_positive_clip(x: torch.Tensor, y: torch.Tensor, scale: float, pos: list[list[bool]]) -> float:
    """UniCL: -1/|P_i| sum_{j in P_i} log softmax_j(s x_i.y_j), both directions, averaged over rows."""
    xs, ys = x.tolist(), y.tolist()
    n = len(xs)
    lg = [[scale * sum(a * b for a, b in zip(xs[i], ys[j], strict=True)) for j in range(n)] for i in range(n)]
    x2y = y2x = 0.0
    for i in range(n):
        lse_row = math.log(sum(math.exp(lg[i][j]) for j in range(n)))
        lse_col = math.log(sum(math.exp(lg[j][i]) for j in range(n)))
        p = [j for j in range(n) if pos[i][j]]
        x2y += -sum(lg[i][j] - lse_row for j in p) / len(p)
        y2x += -sum(lg[j][i] - lse_col for j in p) / len(p)
    return 0.5 * (x2y + y2x) / n


def ref_multi_positive_siglip(
    x: torch.Tensor, y: torch.Tensor, scale: float, bias: float, pos: list[list[bool]]
) -> float:
    xs, ys = x.tolist(), y.tolist()
    n = len(xs)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if pos[i][j] else -1.0
            logit = scale * sum(a * b for a, b in zip(xs[i], ys[j], strict=True)) + bias
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / n


def test_content_ids_match_exactly_identical_rows_only() -> None:
    tokens = torch.tensor([[5, 9, 2, 0], [5, 9, 2, 0], [5, 9, 3, 0], [0, 5, 9, 2]])
    ids = content_ids(tokens)
    assert ids[0] == ids[1]
    assert len({int(i) for i in ids[1:]}) == 3  # one changed token, or the same tokens shifted, is another row
    # floats compare by bit pattern: a one-ulp change is another row, and a row's id does not depend on its batch
    pixels = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    nudged = pixels.clone()
    nudged[3, 0, 2, 1] = torch.nextafter(nudged[3, 0, 2, 1], torch.tensor(2.0))
    a, b = content_ids(pixels), content_ids(nudged)
    assert a[3] != b[3] and torch.equal(a[:3], b[:3])
    assert torch.equal(content_ids(pixels[2:4]), a[2:4])
    assert len(set(a.tolist())) == 6
    # rows longer than one hashing block: a change in the last block still tells rows apart
    long_rows = torch.zeros(3, 2 * 4096 + 5, dtype=torch.long)
    long_rows[1, -1] = 7
    long_ids = content_ids(long_rows)
    assert long_ids[0] == long_ids[2] and long_ids[0] != long_ids[1]


def test_clip_with_distinct_ids_is_clip() -> None:
    x, y = unit_rows(6, 5, seed=1), unit_rows(6, 5, seed=2)
    s = torch.tensor(2.0, dtype=F64)
    ids = (torch.arange(6), torch.arange(6) + 100)
    plain, unicl = clip_loss(x, y, s), clip_loss(x, y, s, ids=ids)
    for key in ("loss", "loss_x2y", "loss_y2x", "acc"):
        assert_close(unicl[key], plain[key])


@pytest.mark.parametrize(
    ("ids_x", "ids_y"),
    [
        ([0, 1, 2, 3, 4, 5], [7, 8, 7, 9, 8, 7]),  # duplicate captions (y)
        ([0, 0, 1, 2, 3, 3], [4, 5, 6, 6, 7, 8]),  # duplicates on both sides, chained: 2~3 by y, 0~1 by x
    ],
)
def test_clip_identical_rows_are_positives(ids_x: list[int], ids_y: list[int]) -> None:
    x, y = unit_rows(6, 4, seed=3), unit_rows(6, 4, seed=4)
    scale = 3.0
    out = clip_loss(x, y, torch.tensor(math.log(scale), dtype=F64), ids=(torch.tensor(ids_x), torch.tensor(ids_y)))
    expected = ref_multi_positive_clip(x, y, scale, positives(ids_x, ids_y))
    assert_close(out["loss"], torch.tensor(expected, dtype=F64))


def test_clip_exact_duplicates_change_nothing_noisy_ones_do() -> None:
    """With duplicate captions embedded identically, the multi-positive target (uniform over the duplicates' equal
    logits) gives CLIP's loss and gradient exactly; they differ once the duplicates' embeddings differ (a
    stochastic text view, e.g. dropout)."""
    x = unit_rows(4, 3, seed=7)
    same = unit_rows(1, 3, seed=8)
    y = torch.cat([same, same, unit_rows(2, 3, seed=9)])  # rows 0 and 1 share a caption
    s = torch.tensor(math.log(10.0), dtype=F64)
    ids = (torch.arange(4), torch.tensor([5, 5, 6, 7]))
    grads = []
    for extra in ({"ids": ids}, {}):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = clip_loss(xg, yg, s, **extra)
        (out["loss"]).backward()
        assert xg.grad is not None and yg.grad is not None
        grads.append((out["loss"].detach(), xg.grad, yg.grad[0] + yg.grad[1]))
    (loss_u, gx_u, gy_u), (loss_c, gx_c, gy_c) = grads
    assert_close(gx_u, gx_c)
    assert_close(gy_u, gy_c)  # the text encoder sees the sum over the duplicates
    assert_close(loss_u, loss_c)
    y_noisy = y.clone()
    y_noisy[1] = F.normalize(y[1] + 0.3 * unit_rows(1, 3, seed=10)[0], dim=0)
    xg = x.clone().requires_grad_()
    clip_loss(xg, y_noisy, s, ids=ids)["loss"].backward()
    xc = x.clone().requires_grad_()
    clip_loss(xc, y_noisy, s)["loss"].backward()
    assert xg.grad is not None and xc.grad is not None
    assert (xg.grad - xc.grad).abs().max() > 1e-3


def test_siglip_identical_rows_are_positives() -> None:
    ids_x, ids_y = [0, 1, 2, 3, 4], [9, 9, 8, 7, 9]
    x, y = unit_rows(5, 4, seed=5), unit_rows(5, 4, seed=6)
    s, b = 4.0, -2.0
    out = siglip_loss(
        x,
        y,
        torch.tensor(math.log(s), dtype=F64),
        torch.tensor(b, dtype=F64),
        ids=(torch.tensor(ids_x), torch.tensor(ids_y)),
    )
    expected = ref_multi_positive_siglip(x, y, s, b, positives(ids_x, ids_y))
    assert_close(out["loss"], torch.tensor(expected, dtype=F64))
    pos = torch.tensor(positives(ids_x, ids_y))
    probs = torch.sigmoid(s * (x @ y.T) + b)
    assert_close(out["pos_prob"], probs[pos].mean())
    assert_close(out["neg_prob"], probs[~pos].mean())


class _Context:
    """The part of StepContext that ``paired_content_ids`` reads: inputs per modality and row presence."""

    def __init__(self, inputs: dict[str, ModalityBatch], present: dict[str, torch.Tensor]) -> None:
        self._inputs, self._present = inputs, present

    def has(self, modality: str, view: str = "clean") -> bool:
        return modality in self._inputs

    def inputs(self, modality: str, view: str = "clean") -> ModalityBatch:
        return self._inputs[modality]

    def paired_rows(self, a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        pa, pb = self._present[a], self._present[b]
        both = pa & pb
        return (pa.cumsum(0) - 1)[both], (pb.cumsum(0) - 1)[both]


def test_paired_content_ids_of_tensor_dict_and_unhashable_inputs() -> None:
    images = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    tokens = {"ids": torch.tensor([[3, 4], [3, 4], [5, 6], [3, 4]]), "mask": torch.ones(4, 2, dtype=torch.bool)}
    # row 2 has no text: the pairs are rows 0, 1, 3, and the text batch holds only those three rows
    present = {"image": torch.tensor([True, True, True, True]), "text": torch.tensor([True, True, False, True])}
    text_rows = {k: v[[0, 1, 3]] for k, v in tokens.items()}
    ctx = _Context({"image": ModalityBatch(images), "text": ModalityBatch(text_rows)}, present)
    ids_image, ids_text = paired_content_ids(ctx, [("image", "clean"), ("text", "clean")], torch.device("cpu"))  # type: ignore[arg-type]
    assert ids_image.shape == ids_text.shape == (3,)
    assert len(set(ids_image.tolist())) == 3
    assert ids_text[0] == ids_text[1] == ids_text[2]  # the three paired captions are all [3, 4]

    class Graphs:  # no tensor rows to hash (e.g. a torch_geometric Batch)
        num_graphs = 4

    ctx = _Context(
        {"image": ModalityBatch(images), "graph": ModalityBatch(Graphs())},
        {"image": torch.ones(4, dtype=torch.bool), "graph": torch.ones(4, dtype=torch.bool)},
    )
    _, ids_graph = paired_content_ids(ctx, [("image", "clean"), ("graph", "clean")], torch.device("cpu"))  # type: ignore[arg-type]
    assert len(set(ids_graph.tolist())) == 4 and (ids_graph < 0).all()  # unique, and never equal to a hash
