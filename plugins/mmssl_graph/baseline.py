"""The raw-input baseline of graphs: a bag of categorical node and edge features."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data


def one_hot_counts(values: Tensor, vocab: Sequence[int]) -> Tensor:
    """How often each category of each feature column occurs, columns side by side.

    Shapes:
        values: [M, F] long, column ``i`` in ``0 .. vocab[i] - 1`` -> [sum(vocab)] float32.
    """
    sizes = torch.as_tensor(list(vocab), dtype=torch.long)
    bad = (values < 0) | (values >= sizes)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"feature column {col} has value {int(values[row, col])}, outside 0..{vocab[col] - 1}")
    offsets = torch.cumsum(sizes, 0) - sizes
    return torch.bincount((values + offsets).reshape(-1), minlength=int(sizes.sum())).float()


def bag_of_features(graphs: Iterable[Data], node_vocab: Sequence[int], edge_vocab: Sequence[int]) -> Tensor:
    """Per graph, with nothing fitted: ``[node counts | node shares | edge counts | edge shares | M | E]``.

    ``node counts`` holds, for each node feature column ``i`` in turn, how many nodes take each of its
    ``node_vocab[i]`` values (for molecules: how many C, N, O, ... atoms, how many aromatic atoms, ...);
    ``node shares`` is the same divided by the number of nodes M (the mean one-hot node feature); ``edge counts``
    and ``edge shares`` do the same over the E edges of ``edge_index`` with ``edge_vocab`` (shares zero when
    E = 0); the last two entries are M and E. Edges are counted as stored: molecules from SMILES hold every bond
    in both directions, so E is twice the bond count.

    Args:
        graphs: Checked categorical graphs (``x`` [M, F] long, ``edge_index`` [2, E], ``edge_attr`` [E, G] long).
        node_vocab, edge_vocab: Vocabulary size of each node / edge feature column.

    Shapes:
        -> [N, 2 * sum(node_vocab) + 2 * sum(edge_vocab) + 2] float32.
    """
    rows = []
    for graph in graphs:
        nodes = one_hot_counts(graph.x, node_vocab)
        edges = one_hot_counts(graph.edge_attr, edge_vocab)
        m, e = graph.x.shape[0], graph.edge_index.shape[1]
        size = torch.tensor([m, e], dtype=torch.float32)
        rows.append(torch.cat([nodes, nodes / max(m, 1), edges, edges / max(e, 1), size]))
    width = 2 * sum(node_vocab) + 2 * sum(edge_vocab) + 2
    return torch.stack(rows) if rows else torch.zeros(0, width)
