"""Decoding raw graph values (SMILES, RDKit molecules, PyG ``Data``, dicts) to checked categorical graphs.

A decoded graph is a ``torch_geometric.data.Data`` with exactly three attributes:

- ``x``: [N, F] long, N >= 1, column ``i`` in ``0 .. node_vocab[i] - 1``;
- ``edge_index``: [2, E] long, node indices in ``0 .. N - 1``;
- ``edge_attr``: [E, G] long, column ``j`` in ``0 .. edge_vocab[j] - 1`` (zeros when the input has none).

Anything else on an input ``Data`` (``y``, ``smiles``, positions, ...) is dropped so every sample collates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

_EXPECTED = "a SMILES string, an RDKit Mol, a torch_geometric Data, or a dict with 'x' and 'edge_index'"


def smiles_to_mol(smiles: str, add_hydrogens: bool = False, kekulize: bool = False) -> Any:
    """Parse a SMILES string with RDKit (its log silenced).

    Raises:
        ValueError: RDKit cannot parse it, or it has no atoms; the message names the SMILES.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if smiles.strip() else None
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}: RDKit rejects it")
    if mol.GetNumAtoms() == 0:
        raise ValueError(f"SMILES {smiles!r} has no atoms")
    if add_hydrogens:
        mol = Chem.AddHs(mol)
    if kekulize:
        Chem.Kekulize(mol)
    return mol


def mol_to_graph(mol: Any) -> Data:
    """An RDKit molecule as ``from_smiles`` features: x [N, 9] long, edge_index [2, E], edge_attr [E, 3] long."""
    from torch_geometric.utils import from_rdmol

    data = from_rdmol(mol)
    return Data(x=data.x, edge_index=data.edge_index, edge_attr=data.edge_attr)


def decode_graph(
    raw: Any,
    node_vocab: Sequence[int],
    edge_vocab: Sequence[int],
    add_hydrogens: bool = False,
    kekulize: bool = False,
) -> Data:
    """Decode one raw graph value and check it against the feature vocabularies.

    Args:
        raw: A SMILES ``str`` (featurised like ``torch_geometric.utils.from_smiles``), an RDKit ``Mol``, a
            ``torch_geometric.data.Data`` or a ``dict`` with ``x`` ([N, F] integer), ``edge_index`` ([2, E]) and
            optionally ``edge_attr`` ([E, G] integer); tensors, arrays or nested lists.
        node_vocab: Vocabulary size of each node feature column (F entries).
        edge_vocab: Vocabulary size of each edge feature column (G entries).
        add_hydrogens, kekulize: SMILES / Mol featurisation switches.

    Returns:
        ``Data(x, edge_index, edge_attr)`` as described in the module docstring.

    Raises:
        ValueError: An unparsable SMILES (named in the message), an empty graph, or features out of range.
        TypeError: A value of another type.
    """
    if isinstance(raw, str):
        graph = mol_to_graph(smiles_to_mol(raw, add_hydrogens, kekulize))
        what = f"SMILES {raw!r}"
    elif _is_mol(raw):
        from rdkit import Chem

        if raw.GetNumAtoms() == 0:
            raise ValueError("cannot decode an RDKit Mol without atoms")
        mol = Chem.AddHs(raw) if add_hydrogens else Chem.Mol(raw)
        if kekulize:
            Chem.Kekulize(mol)
        graph = mol_to_graph(mol)
        what = "RDKit Mol"
    elif isinstance(raw, Data):
        graph = Data(x=raw.x, edge_index=raw.edge_index, edge_attr=raw.get("edge_attr"))
        what = f"Data with {raw.num_nodes} nodes"
    elif isinstance(raw, dict):
        missing = [k for k in ("x", "edge_index") if k not in raw]
        if missing:
            raise ValueError(f"cannot decode a graph dict without {missing} (has keys {sorted(raw)})")
        graph = Data(
            x=_tensor(raw["x"]), edge_index=_tensor(raw["edge_index"]), edge_attr=_tensor(raw.get("edge_attr"))
        )
        what = "graph dict"
    else:
        raise TypeError(f"cannot decode a graph from {type(raw).__name__}: expected {_EXPECTED}")
    return check_graph(graph, node_vocab, edge_vocab, what)


def check_graph(graph: Data, node_vocab: Sequence[int], edge_vocab: Sequence[int], what: str = "graph") -> Data:
    """Check shapes, dtypes and value ranges; fill a missing ``edge_attr`` with zeros. Returns a new ``Data``."""
    x, edge_index, edge_attr = graph.x, graph.edge_index, graph.get("edge_attr")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != len(node_vocab):
        raise ValueError(f"{what}: x must be a [N, {len(node_vocab)}] tensor of categorical features, got {_shape(x)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: the graph has no nodes")
    if x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(f"{what}: x must hold integer categories (as from_smiles gives), got dtype {x.dtype}")
    x = x.long()
    _check_range(x, node_vocab, f"{what}: node feature")
    n = x.shape[0]
    if isinstance(edge_index, Tensor) and edge_index.numel() == 0:  # no edges: `[]` in a manifest reads as [0]
        edge_index = torch.zeros(2, 0, dtype=torch.long)
        if isinstance(edge_attr, Tensor) and edge_attr.numel() == 0:
            edge_attr = None
    if not isinstance(edge_index, Tensor) or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{what}: edge_index must be a [2, E] tensor, got {_shape(edge_index)}")
    if edge_index.is_floating_point():
        raise ValueError(f"{what}: edge_index must hold integer node indices, got dtype {edge_index.dtype}")
    edge_index = edge_index.long()
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"{what}: edge_index refers to nodes outside 0..{n - 1}")
    e = edge_index.shape[1]
    if edge_attr is None:
        edge_attr = torch.zeros(e, len(edge_vocab), dtype=torch.long)
    if not isinstance(edge_attr, Tensor) or edge_attr.ndim != 2 or tuple(edge_attr.shape) != (e, len(edge_vocab)):
        raise ValueError(f"{what}: edge_attr must be a [{e}, {len(edge_vocab)}] tensor, got {_shape(edge_attr)}")
    if edge_attr.is_floating_point() or edge_attr.dtype == torch.bool:
        raise ValueError(f"{what}: edge_attr must hold integer categories, got dtype {edge_attr.dtype}")
    edge_attr = edge_attr.long()
    _check_range(edge_attr, edge_vocab, f"{what}: edge feature")
    return Data(x=x.contiguous(), edge_index=edge_index.contiguous(), edge_attr=edge_attr.contiguous())


def _check_range(values: Tensor, vocab: Sequence[int], what: str) -> None:
    if not values.numel():
        return
    high = torch.as_tensor(list(vocab), dtype=torch.long)
    bad = (values < 0) | (values >= high)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{what} column {col} has value {int(values[row, col])} at row {row}, outside 0..{vocab[col] - 1} "
            "(set node_vocab / edge_vocab for other feature layouts)"
        )


def _tensor(value: Any) -> Tensor | None:
    if value is None or isinstance(value, Tensor):
        return value
    return torch.as_tensor(np.asarray(value))


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)}"
    return type(value).__name__


def _is_mol(value: Any) -> bool:
    try:
        from rdkit import Chem
    except ImportError:  # pragma: no cover - rdkit is a dependency of the graph extra
        return False
    return isinstance(value, Chem.Mol)
