"""GraphCL augmentations of decoded graphs: node dropping, edge perturbation, attribute masking, subgraphs.

Every random choice is drawn from the ``numpy.random.Generator`` passed in, so the same generator state always
gives the same view. No augmentation changes its input or returns a graph without nodes. Graphs whose
``edge_index`` is symmetric are treated as undirected (an edge and its reverse are dropped or added together).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected, sort_edge_index
from torch_geometric.utils import subgraph as pyg_subgraph

from mmssl_graph.options import GraphOptions

#: Above this many candidate node pairs, new edges are found by rejection sampling instead of enumeration.
_ENUMERATE_PAIRS = 200_000


def induced_subgraph(graph: Data, nodes: np.ndarray | Tensor) -> Data:
    """The subgraph on ``nodes`` (kept in increasing order), edges between them, nodes renumbered 0..K-1."""
    index = torch.as_tensor(np.sort(np.asarray(nodes)), dtype=torch.long)
    edge_index, edge_attr = pyg_subgraph(
        index, graph.edge_index, graph.edge_attr, relabel_nodes=True, num_nodes=graph.num_nodes
    )
    return Data(x=graph.x[index], edge_index=edge_index, edge_attr=edge_attr)


def drop_nodes(graph: Data, ratio: float, rng: np.random.Generator) -> Data:
    """Drop ``round(ratio * N)`` random nodes (at most N - 1) and their edges."""
    n = graph.num_nodes
    drop = min(round(ratio * n), n - 1)
    if drop <= 0:
        return graph.clone()
    return induced_subgraph(graph, rng.choice(n, n - drop, replace=False))


def perturb_edges(graph: Data, ratio: float, rng: np.random.Generator) -> Data:
    """Drop ``round(ratio * E)`` random edges and add as many new random ones (fewer if the graph is full).

    E counts undirected bonds once when the graph is undirected. Added edges are not self-loops, do not
    duplicate an existing edge, and copy the features of a random original edge (all zeros when there is none),
    so they look like real bonds.
    """
    n, edge_index, edge_attr = graph.num_nodes, graph.edge_index, graph.edge_attr
    undirected = is_undirected(edge_index, num_nodes=n)
    unit = edge_index[0] <= edge_index[1] if undirected else torch.ones(edge_index.shape[1], dtype=torch.bool)
    pairs, attrs = edge_index[:, unit].numpy(), edge_attr[unit]
    m = pairs.shape[1]
    k = round(ratio * m)
    if k <= 0:
        return graph.clone()
    kept = np.sort(rng.permutation(m)[: m - k])
    new = _new_pairs(n, pairs, k, undirected, rng)
    if m:
        new_attrs = attrs[torch.as_tensor(rng.integers(0, m, size=new.shape[1]), dtype=torch.long)]
    else:
        new_attrs = attrs.new_zeros(new.shape[1], attrs.shape[1])
    out_pairs = torch.as_tensor(np.concatenate([pairs[:, kept], new], axis=1), dtype=torch.long)
    out_attrs = torch.cat([attrs[torch.as_tensor(kept, dtype=torch.long)], new_attrs])
    if undirected:
        loop = out_pairs[0] == out_pairs[1]
        out_pairs = torch.cat([out_pairs, out_pairs[:, ~loop].flip(0)], dim=1)
        out_attrs = torch.cat([out_attrs, out_attrs[~loop]])
    out_index, out_attrs = sort_edge_index(out_pairs, out_attrs, num_nodes=n)
    return Data(x=graph.x.clone(), edge_index=out_index, edge_attr=out_attrs)


def _new_pairs(n: int, pairs: np.ndarray, k: int, undirected: bool, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` node pairs (i < j when undirected, i != j otherwise) that are not in ``pairs``. Shape [2, k']."""
    existing = set((pairs[0] * n + pairs[1]).tolist())
    if undirected:
        existing |= set((pairs[1] * n + pairs[0]).tolist())
    total = n * (n - 1) // (2 if undirected else 1)
    if total <= _ENUMERATE_PAIRS:
        if undirected:
            src, dst = np.triu_indices(n, 1)
        else:
            src, dst = np.nonzero(~np.eye(n, dtype=bool))
        free = ~np.isin(src * n + dst, np.fromiter(existing, dtype=np.int64, count=len(existing)))
        src, dst = src[free], dst[free]
        chosen = np.sort(rng.choice(len(src), size=min(k, len(src)), replace=False))
        return np.stack([src[chosen], dst[chosen]]).astype(np.int64)
    found: list[tuple[int, int]] = []
    for _ in range(100 * k):  # a big sparse graph: almost every random pair is new
        if len(found) == k:
            break
        i, j = (int(v) for v in rng.integers(0, n, size=2))
        if undirected:
            i, j = min(i, j), max(i, j)
        if i == j or i * n + j in existing:
            continue
        existing.add(i * n + j)
        if undirected:
            existing.add(j * n + i)
        found.append((i, j))
    return np.asarray(found, dtype=np.int64).reshape(-1, 2).T


def mask_attributes(graph: Data, ratio: float, rng: np.random.Generator, masked_value: Tensor) -> Data:
    """Set the features of ``round(ratio * N)`` random nodes (at least one when ratio > 0) to ``masked_value``.

    Shapes:
        masked_value: [F] long, the reserved "masked" category of each column (its vocabulary size).
    """
    n = graph.num_nodes
    k = min(n, max(1, round(ratio * n))) if ratio > 0 else 0
    x = graph.x.clone()
    if k:
        x[torch.as_tensor(rng.choice(n, k, replace=False), dtype=torch.long)] = masked_value
    return Data(x=x, edge_index=graph.edge_index.clone(), edge_attr=graph.edge_attr.clone())


def neighbours(graph: Data) -> list[np.ndarray]:
    """Neighbour lists, edges taken in both directions, each sorted. ``[N]`` arrays of node indices."""
    n = graph.num_nodes
    src, dst = graph.edge_index.numpy()
    src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    codes = np.unique(src * n + dst)
    src, dst = codes // n, codes % n
    bounds = np.searchsorted(src, np.arange(n + 1))
    return [dst[bounds[i] : bounds[i + 1]] for i in range(n)]


def sample_subgraph(graph: Data, ratio: float, rng: np.random.Generator, method: str = "random_walk") -> Data:
    """A connected subgraph with ``N - round(ratio * N)`` nodes (at least one) grown from a random node.

    ``bfs`` visits neighbours breadth-first, each node's in random order. ``random_walk`` walks to uniformly
    random neighbours and keeps the nodes it visits; when it finds no new node for 4 N steps it jumps to a random
    unvisited neighbour of the visited set. Either jumps to a random unvisited node when the component is used
    up (disconnected graphs, e.g. salts).
    """
    n = graph.num_nodes
    target = max(1, n - round(ratio * n))
    if target >= n:
        return graph.clone()
    adj = neighbours(graph)
    start = int(rng.integers(n))
    visited, order = {start}, [start]

    def jump() -> int:
        frontier = sorted({int(v) for u in order for v in adj[u]} - visited)
        pool = frontier or sorted(set(range(n)) - visited)
        node = pool[int(rng.integers(len(pool)))]
        visited.add(node)
        order.append(node)
        return node

    if method == "bfs":
        queue = deque([start])
        while len(visited) < target:
            if not queue:
                queue.append(jump())
                continue
            for v in rng.permutation(adj[queue.popleft()]):
                if len(visited) >= target:
                    break
                if int(v) not in visited:
                    visited.add(int(v))
                    order.append(int(v))
                    queue.append(int(v))
    elif method == "random_walk":
        current, stall = start, 0
        while len(visited) < target:
            nbrs = adj[current]
            if len(nbrs) == 0 or stall >= 4 * n:
                current, stall = jump(), 0
                continue
            current = int(nbrs[int(rng.integers(len(nbrs)))])
            if current in visited:
                stall += 1
            else:
                visited.add(current)
                order.append(current)
                stall = 0
    else:
        raise ValueError(f"unknown subgraph method {method!r}; use 'random_walk' or 'bfs'")
    return induced_subgraph(graph, np.asarray(order))


def augmentations(
    options: GraphOptions, masked_value: Tensor
) -> dict[str, Callable[[Data, np.random.Generator], Data]]:
    """name -> ``(graph, rng) -> view`` for each GraphCL augmentation, with the ratios of ``options``."""
    return {
        "node_drop": lambda g, rng: drop_nodes(g, options.node_drop, rng),
        "edge_perturb": lambda g, rng: perturb_edges(g, options.edge_perturb, rng),
        "attr_mask": lambda g, rng: mask_attributes(g, options.attr_mask, rng, masked_value),
        "subgraph": lambda g, rng: sample_subgraph(g, options.subgraph, rng, options.subgraph_method),
    }


def random_view(graph: Data, options: GraphOptions, rng: np.random.Generator, masked_value: Tensor) -> Data:
    """A GraphCL view: one augmentation drawn uniformly from ``options.augmentations`` (``view_mode: one``), or
    all of them in order (``view_mode: all``)."""
    ops = augmentations(options, masked_value)
    names = options.augmentations
    chosen = [names[int(rng.integers(len(names)))]] if options.view_mode == "one" else names
    for name in chosen:
        graph = ops[name](graph, rng)
    return graph
