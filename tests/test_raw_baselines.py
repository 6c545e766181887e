"""Raw-input baselines of modalities whose input is not one float tensor: a bag of tokens for text, a bag of node
and edge features for graphs (``Processor.raw_features``), and the evaluations that report them."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import Tensor

from mmssl.data.sources import Source
from mmssl.eval.base import EVALUATORS, EvalContext, run_evaluations
from mmssl.eval.embed import raw_features
from mmssl.eval.knn import knn_accuracy
from mmssl.modality import ModalityBatch, SupportsRawFeatures
from mmssl.model import JointEmbeddingModel
from mmssl_graph import ATOM_FEATURES, ATOM_VOCAB, BOND_FEATURES, BOND_VOCAB, GraphOptions
from mmssl_graph import build_encoder as build_graph_encoder
from mmssl_graph import build_processor as build_graph_processor
from mmssl_graph.baseline import bag_of_features
from mmssl_text import TextOptions, TextProcessor, build_encoder, build_processor
from mmssl_text.baseline import bag_of_tokens

FRUIT = [
    "A red apple is a sweet fruit.",
    "The ripe banana is a yellow fruit.",
    "Sweet cherries and a green pear.",
    "A bowl of fruit: apple, pear and plum.",
    "Fresh orange juice from sweet fruit.",
    "A sour lemon and a ripe plum.",
    "Grapes are a small sweet fruit.",
    "The pear tree gave ripe fruit.",
]
CARS = [
    "A fast car with a loud engine.",
    "The truck drove down the long road.",
    "An electric car needs a charged battery.",
    "The engine of the old truck broke.",
    "A red car parked by the road.",
    "Tyres and brakes of a racing car.",
    "The bus stopped on the busy road.",
    "A diesel engine in a heavy truck.",
]


@pytest.fixture(scope="module")
def options() -> TextOptions:
    return TextOptions(vocab_size=200, max_length=24, width=16, depth=1, heads=2)


@pytest.fixture(scope="module")
def processor(options: TextOptions) -> TextProcessor:
    return build_processor(options, FRUIT + CARS)


def content_ids(processor: TextProcessor, text: str) -> list[int]:
    """Token ids of a text from the tokenizer itself, special tokens left out."""
    special = set(processor.specials.special_ids)
    return [i for i in processor.tokenizer.encode(text).ids if i not in special]


# -------------------------------------------------------------------------------------------- bag of tokens


def test_processors_offer_raw_features_through_the_public_protocol(processor: TextProcessor) -> None:
    assert isinstance(processor, SupportsRawFeatures)
    assert isinstance(build_graph_processor(GraphOptions()), SupportsRawFeatures)


def test_bag_of_tokens_equals_sklearn_tfidf_over_token_ids(processor: TextProcessor) -> None:
    texts = FRUIT + CARS + ["", "fruit fruit fruit"]
    ours = processor.raw_features(processor.prepare(t) for t in texts)

    vectorizer = TfidfVectorizer(analyzer=lambda t: [str(i) for i in content_ids(processor, t)])
    reference = vectorizer.fit_transform(texts).toarray()
    ids = sorted({i for t in texts for i in content_ids(processor, t)})
    assert ours.shape == (len(texts), len(ids)) and ours.dtype == torch.float32
    columns = [vectorizer.vocabulary_[str(i)] for i in ids]  # our columns are ids in increasing order
    assert torch.allclose(ours, torch.from_numpy(reference[:, columns]).float(), atol=1e-6)
    assert torch.equal(ours[len(texts) - 2], torch.zeros(len(ids)))  # no token: a zero row
    norms = ours.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(int((norms > 0).sum())))


def test_top_k_keeps_the_most_frequent_ids_with_idf_over_all_rows() -> None:
    rows = [[2, 5, 5, 7, 0, 0], [7, 9, 9, 9, 1], [5, 3]]  # 0: padding, 1: another special token
    counts = [Counter(i for i in row if i not in (0, 1)) for row in rows]
    total = sum(counts, Counter())  # 5: 3, 9: 3, 7: 2, 2: 1, 3: 1
    for k in (1, 2, 3, 10):
        ours = bag_of_tokens(rows, ignore={0, 1}, max_tokens=k)
        kept = sorted(sorted(total, key=lambda i: (-total[i], i))[:k])
        expected = torch.zeros(len(rows), len(kept))
        for r, row_counts in enumerate(counts):
            for c, token in enumerate(kept):
                df = sum(token in rc for rc in counts)
                expected[r, c] = row_counts[token] * (math.log((1 + len(rows)) / (1 + df)) + 1)
            norm = expected[r].norm()
            expected[r] = expected[r] / norm if norm > 0 else expected[r]
        assert kept == {1: [5], 2: [5, 9], 3: [5, 7, 9], 10: [2, 3, 5, 7, 9]}[k]
        assert torch.allclose(ours, expected, atol=1e-6), k


def test_identical_texts_give_identical_rows_and_padding_does_not_count(processor: TextProcessor) -> None:
    texts = ["A red apple is a sweet fruit.", "The bus stopped on the busy road.", "A red apple is a sweet fruit."]
    prepared = [processor.prepare(t) for t in texts]
    padded = processor.collate(prepared).data["ids"]  # rows padded with pad_id to the longest
    assert (padded == processor.pad_id).any()
    plain = processor.raw_features(prepared)
    assert torch.equal(plain[0], plain[2]) and not torch.equal(plain[0], plain[1])
    assert torch.equal(processor.raw_features(row.tolist() for row in padded), plain)
    extra_specials = [[processor.mask_id, *ids, processor.pad_id, processor.pad_id] for ids in prepared]
    assert torch.equal(processor.raw_features(extra_specials), plain)


def test_rows_do_not_depend_on_chunks_or_order(processor: TextProcessor) -> None:
    texts = FRUIT + CARS
    whole = raw_features(processor, texts)
    assert whole is not None
    chunked = raw_features(processor, texts, batch_size=3)  # eval's chunk size does not split the vocabulary
    assert chunked is not None and torch.equal(chunked, whole)
    backwards = raw_features(processor, texts[::-1])
    assert backwards is not None and torch.equal(backwards, whole.flip(0))


def test_eval_raw_features_checks_what_a_plugin_returns() -> None:
    class Rows:
        """A third-party processor whose raw baseline is each row's length (and a broken one)."""

        def __init__(self, broken: bool = False) -> None:
            self.broken = broken

        def decode(self, raw: Any) -> list[int]:
            return list(raw)

        def prepare(self, sample: list[int]) -> list[int]:
            return sample

        def collate(self, samples: list[list[int]]) -> ModalityBatch:
            raise AssertionError("raw_features must not collate when the processor has its own baseline")

        def raw_features(self, samples: Any) -> Tensor:
            lengths = torch.tensor([[float(len(s))] for s in samples])
            return lengths[:1] if self.broken else lengths

    assert torch.equal(raw_features(Rows(), [[1], [1, 2, 3]]), torch.tensor([[1.0], [3.0]]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Rows.raw_features must return an \[N, F\] tensor for N = 2"):
        raw_features(Rows(broken=True), [[1], [1, 2, 3]])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ graphs


def expected_graph_row(
    nodes: list[list[int]], edges: list[list[int]], node_vocab: list[int], edge_vocab: list[int]
) -> Tensor:
    """[node counts | node shares | edge counts | edge shares | M | E] by plain loops over the categories."""

    def counts(items: list[list[int]], vocab: list[int]) -> list[float]:
        return [float(sum(item[c] == v for item in items)) for c, size in enumerate(vocab) for v in range(size)]

    node_counts, edge_counts = counts(nodes, node_vocab), counts(edges, edge_vocab)
    node_shares = [c / len(nodes) for c in node_counts]
    edge_shares = [c / len(edges) if edges else 0.0 for c in edge_counts]
    return torch.tensor(node_counts + node_shares + edge_counts + edge_shares + [len(nodes), len(edges)])


def test_graph_bag_on_a_small_vocabulary_by_hand() -> None:
    proc = build_graph_processor(GraphOptions(node_vocab=[3, 2], edge_vocab=[2]))
    path = {"x": [[0, 1], [2, 1], [2, 0]], "edge_index": [[0, 1], [1, 0]], "edge_attr": [[1], [1]]}
    single = {"x": [[1, 0]], "edge_index": torch.empty(2, 0, dtype=torch.long)}  # [[], []] would decode as float
    ours = proc.raw_features(proc.prepare(proc.decode(g)) for g in (path, single))
    # nodes 0..2 of column 0: 1, 0, 2 times; column 1: 1, 2 times; 2 edges of category 1; M = 3, E = 2
    first = [1, 0, 2, 1, 2] + [1 / 3, 0, 2 / 3, 1 / 3, 2 / 3] + [0, 2] + [0, 1] + [3, 2]
    second = [0, 1, 0, 1, 0] + [0, 1, 0, 1, 0] + [0, 0] + [0, 0] + [1, 0]
    assert torch.allclose(ours, torch.tensor([first, second], dtype=torch.float32))


def test_graph_bag_of_two_molecules_by_hand() -> None:
    proc = build_graph_processor(GraphOptions())
    ours = proc.raw_features(proc.prepare(proc.decode(s)) for s in ("CCO", "C=O"))
    # from_smiles atom features: atomic number, chirality (0: unspecified), total degree (with Hs), formal
    # charge (index 5: 0), number of Hs, radical electrons, hybridisation (3: SP2, 4: SP3), aromatic, in ring.
    ethanol = [[6, 0, 4, 5, 3, 0, 4, 0, 0], [6, 0, 4, 5, 2, 0, 4, 0, 0], [8, 0, 2, 5, 1, 0, 4, 0, 0]]
    formaldehyde = [[6, 0, 3, 5, 2, 0, 3, 0, 0], [8, 0, 1, 5, 0, 0, 3, 0, 0]]
    # bond features: type (1: single, 2: double), stereo none, not conjugated; each bond in both directions
    expected = torch.stack(
        [
            expected_graph_row(ethanol, [[1, 0, 0]] * 4, ATOM_VOCAB, BOND_VOCAB),
            expected_graph_row(formaldehyde, [[2, 0, 0]] * 2, ATOM_VOCAB, BOND_VOCAB),
        ]
    )
    assert ours.shape == (2, 2 * 177 + 2 * 30 + 2) and len(ATOM_FEATURES) == 9 and len(BOND_FEATURES) == 3
    assert torch.allclose(ours, expected)
    assert ours[0, 6].item() == 2 and ours[0, 8].item() == 1  # two carbons, one oxygen
    assert ours[:, -2:].tolist() == [[3, 4], [2, 2]]


# ------------------------------------------------------------------------------------------- evaluations


def text_split(texts: list[tuple[str, int]]) -> Source:
    rows = [{"text": t, "label": label} for t, label in texts]
    return Source(rows, ["fruit", "vehicle"], origin="tiny text", columns=["text", "label"])


def test_text_evaluations_report_the_bag_of_tokens(processor: TextProcessor, options: TextOptions) -> None:
    labelled = [(t, 0) for t in FRUIT] + [(t, 1) for t in CARS]
    train, test = labelled[0::2], labelled[1::2]
    sources = {"train": text_split(train), "test": text_split(test)}
    torch.manual_seed(0)
    ctx = EvalContext(
        model=JointEmbeddingModel({"text": build_encoder(options, processor)}, embed_dim=4),
        processors={"text": processor},
        columns={"text": "text"},
        load_split=lambda name: sources[name],
        build_random_model=lambda: JointEmbeddingModel({"text": build_encoder(options, processor)}, embed_dim=4),
    )
    evaluations = [
        (EVALUATORS.get(name), EVALUATORS.get(name).options.model_validate({"name": name, "modality": "text", **o}))
        for name, o in (("knn", {"k": 3}), ("linear_probe", {}))
    ]
    results = run_evaluations(evaluations, ctx).results

    # The same baseline computed independently: scikit-learn's TF-IDF over both splits' token ids.
    texts = [t for t, _ in train + test]
    vectorizer = TfidfVectorizer(analyzer=lambda t: [str(i) for i in content_ids(processor, t)])
    features = torch.from_numpy(vectorizer.fit_transform(texts).toarray()).float()
    labels = np.array([label for _, label in train + test])
    n = len(train)
    expected = knn_accuracy(features[:n], labels[:n], features[n:], labels[n:], 3, 0.07)
    assert results["knn_top1_raw"] == pytest.approx(expected)
    assert results["knn_top1_raw"] > results["knn_chance"] == 0.5
    assert 0.0 <= results["linear_probe_top1_raw"] <= 1.0
    assert {"knn_top1", "knn_top1_random_init", "linear_probe_top1", "linear_probe_top1_random_init"} <= set(results)


def test_graph_evaluation_reports_the_bag_of_features() -> None:
    molecules = ["CCO", "CCCO", "CCCCO", "C=O", "CC=O", "CCC=O"]  # alcohols (0) and aldehydes (1)
    split = Source(
        [{"smiles": s, "label": int("=" in s)} for s in molecules], ["alcohol", "aldehyde"], origin="tiny molecules"
    )
    options = GraphOptions(width=8, layers=1, heads=2)
    proc = build_graph_processor(options)

    def model() -> JointEmbeddingModel:
        return JointEmbeddingModel({"graph": build_graph_encoder(options, proc)}, embed_dim=4)

    ctx = EvalContext(
        model=model(),
        processors={"graph": proc},
        columns={"graph": "smiles"},
        load_split=lambda name: split,
        build_random_model=model,
    )
    kind = EVALUATORS.get("knn")
    results = kind.run(kind.options.model_validate({"name": "knn", "modality": "graph", "k": 1}), ctx)
    raw = bag_of_features((proc.decode(s) for s in molecules), options.node_vocab, options.edge_vocab)
    labels = np.array([int("=" in s) for s in molecules])
    assert results["knn_top1_raw"] == pytest.approx(knn_accuracy(raw, labels, raw, labels, 1, 0.07)) == 1.0
