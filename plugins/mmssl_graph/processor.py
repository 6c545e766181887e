"""The graph processor: decoding, GraphCL views, PyG batching and GraphMAE-style masked node prediction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch

from mmssl.modality import MaskedInput, ModalityBatch
from mmssl_graph.augment import random_view
from mmssl_graph.baseline import bag_of_features
from mmssl_graph.decode import check_graph, decode_graph
from mmssl_graph.options import GraphOptions

#: File written by ``GraphProcessor.save``.
STATE_FILE = "graph.json"
_STATE_VERSION = 1


class GraphProcessor:
    """Turns raw graph values into checked categorical graphs, GraphCL views, PyG batches and masked inputs.

    Nothing is fitted: the feature vocabularies come from the options.

    Masking is categorical (MLM-style, objective ``mlm``): hidden nodes get the reserved "masked" category in
    every feature column and a ``node_mask`` flag that makes the encoder use its learnable [MASK] embedding;
    the target is the original value of feature column ``mask_target`` (default 0, the atom type), with
    ``num_classes = node_vocab[mask_target]`` (119 atomic numbers for molecules).
    """

    def __init__(self, options: GraphOptions) -> None:
        self.options = options
        #: [F] long, the reserved "masked" category of each node feature column (its vocabulary size).
        self.masked_value = torch.tensor(options.node_vocab, dtype=torch.long)

    def __repr__(self) -> str:
        o = self.options
        return f"GraphProcessor(node_vocab={o.node_vocab}, edge_vocab={o.edge_vocab}, views={o.augmentations})"

    @property
    def num_classes(self) -> int:
        """Classes of the masked node prediction target."""
        return self.options.node_vocab[self.options.mask_target]

    def decode(self, raw: Any) -> Data:
        """Decode a SMILES string, RDKit Mol, PyG ``Data`` or dict (see ``mmssl_graph.decode.decode_graph``)."""
        o = self.options
        return decode_graph(raw, o.node_vocab, o.edge_vocab, o.add_hydrogens, o.kekulize)

    def prepare(self, sample: Data) -> Data:
        """The decoded graph itself (graphs need no deterministic preprocessing)."""
        return self._check(sample)

    def augment(self, sample: Data, rng: np.random.Generator) -> Data:
        """A GraphCL view (see ``mmssl_graph.augment.random_view``); all randomness comes from ``rng``."""
        return random_view(self._check(sample), self.options, rng, self.masked_value)

    def collate(self, samples: list[Data]) -> ModalityBatch:
        """``Batch.from_data_list`` of prepared or augmented graphs.

        Returns:
            ``ModalityBatch(data=batch, padding_mask=padding)`` where padding is the dense node layout of the
            encoder's tokens (``to_dense_batch``).

        Shapes:
            data.x: [M, F] long (M nodes in all); data.batch: [M]; padding: [B, Nmax] bool, True at padding.
        """
        if not samples:
            raise ValueError("graph modality: cannot collate an empty list of graphs")
        batch = Batch.from_data_list([self._check(s) for s in samples])
        counts = torch.tensor([s.num_nodes for s in samples])
        padding = torch.arange(int(counts.max()))[None, :] >= counts[:, None]
        return ModalityBatch(data=batch, padding_mask=padding)

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """GraphMAE-style replace masking of ``ratio`` of the nodes of every graph.

        Each graph with n nodes gets ``min(n, max(mask_min_nodes, round(ratio * n)))`` random nodes hidden. The
        returned batch is a clone whose ``x`` holds the reserved "masked" category at hidden nodes and whose
        ``node_mask`` [M] flags them (the encoder embeds them as its learnable [MASK] vector). Nothing is
        dropped (``keep`` stays None).

        Args:
            batch: A collated batch, already on its device.
            ratio: Share of nodes hidden, in (0, 1].
            generator: Random generator on the batch's device (None: torch's global one).

        Returns:
            ``MaskedInput`` with mask [B, Nmax] bool (never True at padding), target [B, Nmax] long (the original
            ``x[:, mask_target]``, 0 at padding) and ``num_classes``.
        """
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"graph masking ratio must be in (0, 1], got {ratio}")
        data = batch.data
        if not isinstance(data, Batch):
            raise ValueError(f"graph batch data must be a torch_geometric Batch (from collate), got {type(data)}")
        x, index = data.x, data.batch
        device = x.device
        size = int(data.num_graphs)
        counts = torch.bincount(index, minlength=size)
        hidden = (counts.double() * ratio).round().long().clamp_min(self.options.mask_min_nodes).minimum(counts)
        noise = torch.rand(x.shape[0], generator=generator, device=device, dtype=torch.float64)
        order = torch.argsort(index.double() + noise)  # grouped by graph, random order inside each graph
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=device) - starts[index[order]]
        node_mask = rank < hidden[index]

        masked = data.clone()
        masked.x = torch.where(node_mask.unsqueeze(-1), self.masked_value.to(device), x)
        masked.node_mask = node_mask
        target, _ = to_dense_batch(x[:, self.options.mask_target], index, fill_value=0, batch_size=size)
        mask, _ = to_dense_batch(node_mask, index, fill_value=False, batch_size=size)
        return MaskedInput(
            batch=ModalityBatch(data=masked, padding_mask=batch.padding_mask, keep=None),
            mask=mask,
            target=target,
            num_classes=self.num_classes,
        )

    def raw_features(self, samples: Iterable[Data]) -> Tensor:
        """The raw-input baseline: per graph, counts and shares of each node and edge feature category, then the
        node and edge counts (``mmssl_graph.baseline.bag_of_features``); nothing is fitted.

        Shapes:
            -> [N, 2 * sum(node_vocab) + 2 * sum(edge_vocab) + 2] float32 (416 for molecules).
        """
        o = self.options
        return bag_of_features((self._check(s) for s in samples), o.node_vocab, o.edge_vocab)

    def state(self) -> dict[str, Any]:
        """What ``save`` writes: the feature layout the encoder was built for."""
        o = self.options
        return {"version": _STATE_VERSION, "node_vocab": o.node_vocab, "edge_vocab": o.edge_vocab}

    def save(self, directory: Path) -> None:
        """Write ``graph.json`` (the feature vocabularies) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")

    def _check(self, sample: Any) -> Data:
        if not isinstance(sample, Data) or not isinstance(sample.get("x"), Tensor):
            raise ValueError(f"expected a decoded graph (from decode), got {type(sample).__name__}")
        if set(sample.keys()) != {"x", "edge_index", "edge_attr"} or sample.x.dtype != torch.long:
            o = self.options
            return check_graph(sample, o.node_vocab, o.edge_vocab, "graph sample")
        return sample


def build_processor(options: GraphOptions, corpus: Iterable[Any] | None = None) -> GraphProcessor:
    """A processor for ``options``; nothing is fitted, so the corpus is not read."""
    return GraphProcessor(options)


def load_processor(options: GraphOptions, directory: Path) -> GraphProcessor:
    """Rebuild the processor ``GraphProcessor.save`` wrote; its vocabularies must match the options."""
    file = Path(directory) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"graph processor state {file} not found (written by GraphProcessor.save)")
    state = json.loads(file.read_text())
    for key in ("node_vocab", "edge_vocab"):
        if state.get(key) != getattr(options, key):
            raise ValueError(
                f"{file} was saved with {key} {state.get(key)} but the options give {getattr(options, key)}"
            )
    return GraphProcessor(options)
