"""Tests of the cross-modal retrieval evaluator (``mmssl/eval/retrieval.py``)."""

from __future__ import annotations

from itertools import combinations
from math import comb
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mmssl.data.sources import Source
from mmssl.eval.base import EVALUATORS, EvalContext
from mmssl.eval.retrieval import RetrievalOptions, chance_recall_at_k, recall_at_k, relevance
from mmssl.modality import EncoderOutput, ModalityBatch


def brute_force_recall(similarity: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Rank every gallery item of every query by sorting, then look for a relevant one in the first k."""
    hits = 0
    for q in range(similarity.shape[0]):
        order = sorted(range(similarity.shape[1]), key=lambda g: -float(similarity[q, g]))
        hits += any(bool(relevant[q, g]) for g in order[:k])
    return hits / similarity.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_matches_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, g = 17, 23
    similarity = torch.randn(q, g, generator=gen)
    relevant = torch.rand(q, g, generator=gen) < 0.08
    relevant[torch.arange(q), torch.arange(q)] = True
    ks = [1, 2, 5, 30]
    got = recall_at_k(similarity, relevant, ks)
    for k in ks:
        assert got[k] == pytest.approx(brute_force_recall(similarity, relevant, k)), k
    assert got[30] == 1.0  # k beyond the gallery: every query has a relevant item somewhere


def test_recall_perfect_and_reversed() -> None:
    n = 6
    eye = torch.eye(n, dtype=torch.bool)
    assert recall_at_k(torch.eye(n), eye, [1]) == {1: 1.0}
    assert recall_at_k(-torch.eye(n), eye, [1, n - 1, n]) == {1: 0.0, n - 1: 0.0, n: 1.0}
    with pytest.raises(ValueError, match="differ"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool), [1])


def test_relevance_counts_equal_strings_and_chance() -> None:
    audio = [Path("a.wav"), Path("b.wav"), Path("c.wav"), Path("d.wav")]
    text = ["one", "two", "one", "three"]
    rel = relevance(audio, text)
    expected = torch.eye(4, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True
    assert torch.equal(rel, expected)
    assert torch.equal(relevance(audio, text, match_equal=False), torch.eye(4, dtype=torch.bool))

    # Chance: exact expectation over all rankings = 1 - C(G - m, k) / C(G, k), m relevant items per query.
    chance = chance_recall_at_k(rel, [1, 2])
    assert chance[1] == pytest.approx((2 / 4 + 2 / 4 + 1 / 4 + 1 / 4) / 4)
    per_query = [1 - comb(4 - m, 2) / comb(4, 2) for m in (2, 1, 2, 1)]
    assert chance[2] == pytest.approx(sum(per_query) / 4)
    # ... which equals the share of the C(G, k) top-k sets that contain a relevant item.
    q0 = sum(any(rel[0, g] for g in top) for top in combinations(range(4), 2)) / comb(4, 2)
    assert q0 == pytest.approx(per_query[0])
    assert chance_recall_at_k(torch.eye(10, dtype=torch.bool), [1, 5]) == pytest.approx({1: 0.1, 5: 0.5})


class LookupModel(torch.nn.Module):
    """A stand-in model: rows embed to fixed vectors looked up by their raw value."""

    def __init__(self, table: dict[str, dict[object, torch.Tensor]]) -> None:
        super().__init__()
        self.table = table
        self.embed_dim = 3

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        vectors = torch.stack([self.table[modality][v] for v in batch.data])
        return EncoderOutput(tokens=vectors[:, None], pooled=vectors)

    def project(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return pooled


class Identity:
    def decode(self, raw):
        return raw

    def prepare(self, sample):
        return sample

    def collate(self, samples):
        return ModalityBatch(data=list(samples))


def test_evaluator_writes_both_directions_baseline_and_chance() -> None:
    rows = [
        {"audio": "clip0", "text": "one"},
        {"audio": "clip1", "text": "two"},
        {"audio": "clip2", "text": "one"},
        {"audio": "clip3", "text": None},  # not paired: skipped
    ]
    basis = torch.eye(3)
    trained = LookupModel(
        {
            "audio": {"clip0": basis[0], "clip1": basis[1], "clip2": basis[0], "clip3": basis[2]},
            "text": {"one": basis[0], "two": basis[1]},
        }
    )
    flipped = LookupModel(
        {
            "audio": {"clip0": basis[1], "clip1": basis[0], "clip2": basis[1], "clip3": basis[2]},
            "text": {"one": basis[0], "two": basis[1]},
        }
    )
    ctx = EvalContext(
        model=trained,
        processors={"audio": Identity(), "text": Identity()},
        columns={"audio": "audio", "text": "text"},
        load_split=lambda split: Source(rows, origin=split),
        build_random_model=lambda: flipped,
    )
    kind = EVALUATORS.get("retrieval")
    options = kind.options.model_validate({"name": "retrieval", "modalities": ["audio", "text"], "ks": [1, 2]})
    assert kind.splits(options) == ["test"] and kind.modalities(options) == ["audio", "text"]
    results = kind.run(options, ctx)
    assert results["retrieval_queries"] == 3
    assert results["retrieval_audio2text_r@1"] == 1.0 and results["retrieval_text2audio_r@1"] == 1.0
    assert results["retrieval_audio2text_r@1_random_init"] == 0.0
    assert results["retrieval_chance_r@1"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    assert set(results) == {
        f"retrieval_{d}_r@{k}{s}" for d in ("audio2text", "text2audio") for k in (1, 2) for s in ("", "_random_init")
    } | {"retrieval_chance_r@1", "retrieval_chance_r@2", "retrieval_queries"}

    with pytest.raises(ValidationError, match="must differ"):
        RetrievalOptions(name="retrieval", modalities=["audio", "audio"])
    with pytest.raises(ValidationError, match="at least 1"):
        RetrievalOptions(name="retrieval", modalities=["audio", "text"], ks=[0])


def brute_force_label_recall(similarity: torch.Tensor, labels_q: list[int], labels_g: list[int], k: int) -> float:
    """Sort each query's gallery by similarity and look for an item with the query's label among the first k."""
    hits = 0
    for q in range(similarity.shape[0]):
        order = sorted(range(similarity.shape[1]), key=lambda g: -float(similarity[q, g]))
        hits += any(labels_g[g] == labels_q[q] for g in order[:k])
    return hits / similarity.shape[0]


def brute_force_label_chance(labels_q: list[int], labels_g: list[int], k: int) -> float:
    """Share of all k-item top sets that hold an item of the query's label, averaged over the queries."""
    tops = list(combinations(range(len(labels_g)), k))
    return sum(sum(any(labels_g[g] == lq for g in top) for top in tops) / len(tops) for lq in labels_q) / len(labels_q)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_matching_across_modalities_never_paired(seed: int) -> None:
    """Audio rows and image rows are separate (no row has both); a retrieved item is right when labels agree."""
    gen = torch.Generator().manual_seed(seed)
    n_audio, n_image, n_labels = 11, 7, 3
    labels_a = torch.randint(0, n_labels, (n_audio,), generator=gen).tolist()
    labels_i = torch.randint(0, n_labels, (n_image,), generator=gen).tolist()
    rows = [{"audio": f"a{i}", "text": "spoken", "label": lab} for i, lab in enumerate(labels_a)]
    rows += [{"image": f"i{i}", "text": "caption", "label": lab} for i, lab in enumerate(labels_i)]
    rows += [{"audio": "unlabelled", "label": -1}, {"image": "no label"}]  # left out
    table = {
        "audio": {f"a{i}": torch.randn(3, generator=gen) for i in range(n_audio)},
        "image": {f"i{i}": torch.randn(3, generator=gen) for i in range(n_image)},
    }
    table["audio"]["unlabelled"] = table["image"]["no label"] = torch.ones(3)
    model = LookupModel(table)
    ctx = EvalContext(
        model=model,
        processors={"audio": Identity(), "image": Identity()},
        columns={"audio": "audio", "image": "image"},
        load_split=lambda split: Source(rows, origin=split),
        build_random_model=lambda: model,
    )
    kind = EVALUATORS.get("retrieval")
    ks = [1, 2, 3]
    options = kind.options.model_validate(
        {"name": "retrieval", "modalities": ["audio", "image"], "match": "label", "ks": ks, "prefix": "ai"}
    )
    results = kind.run(options, ctx)

    emb_a = torch.nn.functional.normalize(torch.stack([table["audio"][f"a{i}"] for i in range(n_audio)]), dim=-1)
    emb_i = torch.nn.functional.normalize(torch.stack([table["image"][f"i{i}"] for i in range(n_image)]), dim=-1)
    similarity = emb_a @ emb_i.T
    for k in ks:
        a2i = brute_force_label_recall(similarity, labels_a, labels_i, k)
        i2a = brute_force_label_recall(similarity.T, labels_i, labels_a, k)
        assert results[f"ai_audio2image_r@{k}"] == pytest.approx(a2i), k
        assert results[f"ai_image2audio_r@{k}"] == pytest.approx(i2a), k
        assert results[f"ai_audio2image_r@{k}_random_init"] == pytest.approx(a2i)
        assert results[f"ai_audio2image_chance_r@{k}"] == pytest.approx(brute_force_label_chance(labels_a, labels_i, k))
        assert results[f"ai_image2audio_chance_r@{k}"] == pytest.approx(brute_force_label_chance(labels_i, labels_a, k))
    assert results["ai_audio2image_queries"] == n_audio and results["ai_image2audio_queries"] == n_image
    assert "ai_queries" not in results and "ai_chance_r@1" not in results


def test_label_relevance_and_pair_mode_needs_paired_rows() -> None:
    from mmssl.eval.retrieval import label_relevance, paired_values

    rel = label_relevance([0, 1, 1], [1, 0])
    assert torch.equal(rel, torch.tensor([[False, True], [True, False], [True, False]]))
    with pytest.raises(ValueError, match="no rows with both"):
        paired_values(Source([{"audio": "a"}, {"image": "i"}], origin="split"), "audio", "image")
    with pytest.raises(ValidationError):
        RetrievalOptions(name="retrieval", modalities=["audio", "image"], match="labels")


def test_label_matching_merges_equal_strings_of_one_label() -> None:
    """Templated captions: equal strings with equal labels are one query and one gallery item."""
    rows = [
        {"image": "i0", "text": "a seven", "label": 7},
        {"image": "i1", "text": "a seven", "label": 7},
        {"image": "i2", "text": "a one", "label": 1},
        {"image": "i3", "text": "the digit one", "label": 1},
    ]
    basis = torch.eye(3)
    table = {
        "image": {"i0": basis[0], "i1": basis[0], "i2": basis[1], "i3": basis[2]},
        "text": {"a seven": basis[0], "a one": basis[2], "the digit one": basis[1]},
    }
    model = LookupModel(table)
    ctx = EvalContext(
        model=model,
        processors={"image": Identity(), "text": Identity()},
        columns={"image": "image", "text": "text"},
        load_split=lambda split: Source(rows, origin=split),
        build_random_model=lambda: model,
    )
    kind = EVALUATORS.get("retrieval")
    spec = {"name": "retrieval", "modalities": ["image", "text"], "match": "label", "ks": [1, 2]}
    results = kind.run(kind.options.model_validate(spec), ctx)
    assert results["retrieval_image2text_queries"] == 4 and results["retrieval_text2image_queries"] == 3
    assert results["retrieval_image2text_r@1"] == 1.0 and results["retrieval_text2image_r@1"] == 1.0
    # gallery of 3 texts, two of them "one": chance@1 for a seven is 1/3, for a one 2/3
    assert results["retrieval_image2text_chance_r@1"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 2 / 3) / 4)
    every_row = kind.run(kind.options.model_validate({**spec, "unique_strings": False}), ctx)
    assert every_row["retrieval_image2text_queries"] == 4 and every_row["retrieval_text2image_queries"] == 4
