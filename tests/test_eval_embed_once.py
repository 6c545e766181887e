"""Evaluations that score several read-outs of one split encode each of its rows once."""

from __future__ import annotations

import pytest
import torch
from index_rows import IndexRows
from tolerances import F32
from torch import nn

from mmssl.data.sources import Source
from mmssl.eval.base import EVALUATORS, EvalContext, run_evaluations
from mmssl.eval.embed import embed_values
from mmssl.eval.knn import knn_accuracy
from mmssl.modality import EncoderOutput, ModalityBatch


class _CountingGrid(nn.Module):
    """Looks up a [N, 4, 3] token grid per row (pooled: the tokens' mean) and counts the rows it encodes."""

    def __init__(self, grid: torch.Tensor) -> None:
        super().__init__()
        self.grid = grid
        self.embed_dim = grid.shape[2]
        self.rows_encoded = 0
        self.proj = nn.Linear(3, 2, bias=False)

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        self.rows_encoded += len(batch.data)
        tokens = self.grid[batch.data]
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))

    def project(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(pooled), dim=-1)


def test_pooled_and_tokens_readouts_share_one_pass_per_split() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    grid = torch.randn(60, 4, 3, generator=g) + labels[:, None, None].float()
    sources = {
        "train": Source([{"x": i, "label": int(labels[i])} for i in range(40)]),
        "test": Source([{"x": i, "label": int(labels[i])} for i in range(40, 60)]),
    }
    model = _CountingGrid(grid)
    ctx = EvalContext(model, {"m": IndexRows()}, {"m": "x"}, sources.__getitem__, lambda: None)
    knn = EVALUATORS.get("knn")
    evaluations = [
        (knn, knn.options(name="knn", modality="m", k=5, features="tokens", baselines=[], batch_size=16)),
        (knn, knn.options(name="knn", modality="m", k=5, baselines=[], prefix="knn_pooled", batch_size=16)),
    ]
    report = run_evaluations(evaluations, ctx)

    assert not report.errors
    assert ctx.features_of == {("m", "train"): {"pooled", "tokens"}, ("m", "test"): {"pooled", "tokens"}}
    assert model.rows_encoded == 60  # 40 bank rows and 20 query rows, once each for both read-outs
    for feature, metric in (("tokens", "knn_top1"), ("pooled", "knn_pooled_top1")):
        bank = embed_values(model, "m", IndexRows(), list(range(40)), feature, batch_size=7)
        query = embed_values(model, "m", IndexRows(), list(range(40, 60)), feature, batch_size=7)
        expected = knn_accuracy(bank, labels[:40].numpy(), query, labels[40:].numpy(), 5, 0.07)
        assert report.results[metric] == expected
    encoded = model.rows_encoded
    assert ctx.embeddings(model, "m", "test", "tokens", 16).shape == (20, 12)
    assert model.rows_encoded == encoded  # cached


def test_projected_is_the_projection_of_cached_pooled_embeddings() -> None:
    """Zero-shot reads `projected`; after a kNN of the same split it projects the cached pooled rows."""
    grid = torch.randn(30, 4, 3, generator=torch.Generator().manual_seed(1))
    sources = {"test": Source([{"x": i, "label": i % 2} for i in range(30)])}
    model = _CountingGrid(grid)
    ctx = EvalContext(model, {"m": IndexRows()}, {"m": "x"}, sources.__getitem__, lambda: None)
    ctx.embeddings(model, "m", "test", "pooled", 8)
    encoded = model.rows_encoded
    projected = ctx.embeddings(model, "m", "test", "projected", 8)
    assert model.rows_encoded == encoded
    expected = nn.functional.normalize(grid.mean(1) @ model.proj.weight.T, dim=-1)
    torch.testing.assert_close(projected, expected, **F32)


def test_a_failed_pass_leaves_the_model_in_its_training_mode() -> None:
    """Embedding switches the model to eval mode and back, also when a batch raises (e.g. tokens of padded rows)."""

    class _Failing(_CountingGrid):
        def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
            raise ValueError("no tokens here")

    model = _Failing(torch.zeros(4, 4, 3)).train()
    with pytest.raises(ValueError, match="no tokens here"):
        embed_values(model, "m", IndexRows(), [0, 1], "tokens")
    assert model.training


def test_evaluations_declare_the_read_outs_they_embed() -> None:
    """`reads` is how run_evaluations learns every read-out of a split before the first pass."""
    knn, probe, zero_shot = (EVALUATORS.get(name) for name in ("knn", "linear_probe", "zero_shot"))
    knn_options = knn.options(name="knn", modality="image", bank="train", query="test", features="tokens")
    probe_options = probe.options(name="linear_probe", modality="image", train="bank", test="test")
    zero_shot_options = zero_shot.options(name="zero_shot", modality="image", query="test", class_names=["a", "b"])

    assert knn.reads(knn_options) == [("image", "train", "tokens"), ("image", "test", "tokens")]
    assert probe.reads(probe_options) == [("image", "bank", "pooled"), ("image", "test", "pooled")]
    assert zero_shot.reads(zero_shot_options) == []
    # the splits and modalities knn and the probe check against the recipe are the ones their reads name
    assert (knn.splits(knn_options), knn.modalities(knn_options)) == (["train", "test"], ["image"])
    assert (probe.splits(probe_options), probe.modalities(probe_options)) == (["bank", "test"], ["image"])
    same = knn.options(name="knn", modality="image", bank="test", query="test")
    assert knn.splits(same) == ["test"]  # a bank that is the query split is one split, read once


def test_an_evaluator_without_reads_must_name_its_splits() -> None:
    from mmssl.eval.base import EvalOptions, register_evaluator

    with pytest.raises(TypeError, match="'no_reads': give splits and modalities, or reads"):
        register_evaluator("no_reads", EvalOptions, modalities=lambda o: ["image"])
