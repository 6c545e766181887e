"""The graph encoder: categorical feature embedders, GIN-E or GATv2 message passing, dense tokens and pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, GINEConv
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.nn.pool import global_add_pool, global_mean_pool
from torch_geometric.utils import to_dense_batch

from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl_graph.options import GraphOptions


class CategoricalEmbedder(nn.Module):
    """Sum of one ``nn.Embedding`` per categorical feature column.

    Each table has ``vocab + 1`` rows: row ``vocab`` is the reserved "masked" category that attribute masking
    (a GraphCL augmentation) and masked node prediction write into the input.

    Args:
        vocab: Vocabulary size of each column.
        width: Embedding width D.

    Shapes:
        features: [M, len(vocab)] long -> [M, D]
    """

    def __init__(self, vocab: Sequence[int], width: int) -> None:
        super().__init__()
        self.vocab = list(vocab)
        self.tables = nn.ModuleList(nn.Embedding(v + 1, width) for v in self.vocab)
        for table in self.tables:
            nn.init.xavier_uniform_(table.weight)

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != len(self.tables):
            raise ValueError(f"expected {len(self.tables)} feature columns, got {features.shape[-1]}")
        out = self.tables[0](features[:, 0])
        for i in range(1, len(self.tables)):
            out = out + self.tables[i](features[:, i])
        return out


class NodeEmbedder(nn.Module):
    """Atom (node) embeddings with a learnable [MASK] embedding for masked node prediction (GraphMAE).

    Nodes flagged in ``node_mask`` are embedded as if every feature column held its reserved "masked"
    category, whatever their ``x`` holds: the [MASK] embedding is the sum of the reserved rows of the tables,
    learned like any other row (and shared with the ``attr_mask`` augmentation, as in Hu et al.'s attribute
    masking). Nothing of a masked node's own features reaches the encoder, and no parameter goes unused when
    a recipe never masks (DDP rejects parameters without gradient).

    Shapes:
        x: [M, F] long, node_mask: [M] bool or None -> [M, D]
    """

    def __init__(self, vocab: Sequence[int], width: int) -> None:
        super().__init__()
        self.features = CategoricalEmbedder(vocab, width)
        self.register_buffer("masked_value", torch.tensor(list(vocab), dtype=torch.long), persistent=False)

    def forward(self, x: Tensor, node_mask: Tensor | None = None) -> Tensor:
        if node_mask is not None:
            x = torch.where(node_mask.unsqueeze(-1), self.masked_value, x)
        return self.features(x)

    @property
    def mask_embedding(self) -> Tensor:
        """The [MASK] embedding. Shapes: -> [D]."""
        return self.features(self.masked_value[None])[0]


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class GraphEncoder(nn.Module):
    """Message passing over a PyG batch; tokens are the final node features in a dense padded layout.

    Each layer: edge features embedded (one embedder per layer, as in Hu et al.'s GIN-E), a ``GINEConv`` (MLP
    D -> 2D -> D) or ``GATv2Conv`` (``heads`` heads of width D / heads, bond features in the attention), a
    normalisation, ReLU (except after the last layer) and dropout.

    Args:
        options: The graph options (vocabularies, ``gnn``, ``width``, ``layers``, ``heads``, ``dropout``,
            ``norm``, ``pooling``).

    Input: ``ModalityBatch.data`` is a ``torch_geometric.data.Batch`` with ``x`` [M, F] long, ``edge_index``,
    ``edge_attr`` [E, G] long, ``batch`` [M] and, for masked inputs, ``node_mask`` [M] bool.

    Output: tokens [B, Nmax, D] (``to_dense_batch`` order: each graph's nodes in order, then padding), pooled
    [B, D] over real nodes, padding_mask [B, Nmax] True at padding.
    """

    def __init__(self, options: GraphOptions) -> None:
        super().__init__()
        d = options.width
        self.width = d
        self.gnn = options.gnn
        self.nodes = NodeEmbedder(options.node_vocab, d)
        self.edges = nn.ModuleList(CategoricalEmbedder(options.edge_vocab, d) for _ in range(options.layers))
        convs: list[nn.Module] = []
        for _ in range(options.layers):
            if options.gnn == "gin":
                mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                convs.append(GINEConv(mlp, train_eps=True))
            else:
                convs.append(GATv2Conv(d, d // options.heads, heads=options.heads, edge_dim=d, fill_value="mean"))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(_norm(options.norm, d) for _ in range(options.layers))
        self.dropout = nn.Dropout(options.dropout)
        self.pooling = options.pooling
        self.attention_pool = (
            AttentionalAggregation(gate_nn=nn.Linear(d, 1)) if options.pooling == "attention" else None
        )

    def node_features(self, batch: ModalityBatch) -> Tensor:
        """Final node features of every node of the batch. Shapes: -> [M, D]."""
        if batch.keep is not None:
            raise ValueError("the graph encoder does not drop nodes: its masks replace them (batch.keep must be None)")
        data = batch.data
        node_mask = data.get("node_mask") if hasattr(data, "get") else None
        h = self.nodes(data.x, node_mask)
        last = len(self.convs) - 1
        for i, (conv, norm, edges) in enumerate(zip(self.convs, self.norms, self.edges, strict=True)):
            h = norm(conv(h, data.edge_index, edges(data.edge_attr)))
            if i < last:
                h = torch.relu(h)
            h = self.dropout(h)
        return h

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        data = batch.data
        h = self.node_features(batch)
        index = data.batch
        # Sizes from the collated padding mask [B, Nmax] stay symbolic under torch.export (int() would fix them).
        size = int(data.num_graphs) if batch.padding_mask is None else batch.padding_mask.shape[0]
        if self.pooling == "mean":
            pooled = global_mean_pool(h, index, size)
        elif self.pooling == "add":
            pooled = global_add_pool(h, index, size)
        else:
            pooled = self.attention_pool(h, index, dim_size=size)
        width = None if batch.padding_mask is None else batch.padding_mask.shape[1]
        tokens, real = to_dense_batch(h, index, batch_size=size, max_num_nodes=width)
        return EncoderOutput(tokens=tokens, pooled=pooled, padding_mask=~real)


def build_encoder(options: GraphOptions, processor: object | None = None) -> GraphEncoder:
    """A ``GraphEncoder`` for ``options``; the processor is not needed (accepted for the plugin contract)."""
    return GraphEncoder(options)
