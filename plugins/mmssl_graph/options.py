"""Recipe options of the graph modality (``modalities.graph.options``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch_geometric.utils.smiles import e_map, x_map

#: Vocabulary of each of the 9 categorical atom features of ``torch_geometric.utils.from_smiles`` (column order).
ATOM_VOCAB: list[int] = [len(values) for values in x_map.values()]
#: Vocabulary of each of the 3 categorical bond features of ``from_smiles`` (bond type, stereo, conjugated).
BOND_VOCAB: list[int] = [len(values) for values in e_map.values()]
#: Names of the atom feature columns, in order.
ATOM_FEATURES: list[str] = list(x_map)
#: Names of the bond feature columns, in order.
BOND_FEATURES: list[str] = list(e_map)

Augmentation = Literal["node_drop", "edge_perturb", "attr_mask", "subgraph"]


class GraphOptions(BaseModel):
    """Featurisation, encoder, GraphCL augmentation and masking options for graphs (molecules by default).

    Node and edge features are categorical: column ``i`` of ``x`` takes values in ``0 .. node_vocab[i] - 1``
    (the layout of ``torch_geometric.utils.from_smiles`` by default), likewise ``edge_attr`` with
    ``edge_vocab``.
    """

    model_config = ConfigDict(extra="forbid")

    # Featurisation.
    node_vocab: list[int] = Field(
        default_factory=lambda: list(ATOM_VOCAB),
        min_length=1,
        description="Vocabulary size of each categorical node feature column (default: from_smiles' 9 atom features).",
    )
    edge_vocab: list[int] = Field(
        default_factory=lambda: list(BOND_VOCAB),
        min_length=1,
        description="Vocabulary size of each categorical edge feature column (default: from_smiles' 3 bond "
        "features); graphs without edge_attr get all-zero edge features.",
    )
    add_hydrogens: bool = Field(False, description="SMILES: add explicit hydrogen atoms as nodes.")
    kekulize: bool = Field(False, description="SMILES: turn aromatic bonds into single/double bonds.")

    # Encoder.
    gnn: Literal["gin", "gat"] = Field(
        "gin", description="Message passing layer: GIN with bond features (GINEConv) or attention (GATv2Conv)."
    )
    width: int = Field(128, gt=0, description="Hidden width D of node features (and of the pooled embedding).")
    layers: int = Field(3, ge=1, description="Number of message passing layers.")
    heads: int = Field(4, ge=1, description="Attention heads of the GATv2 layers; must divide width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each layer.")
    norm: Literal["batch", "layer", "none"] = Field("batch", description="Normalisation after each layer.")
    pooling: Literal["mean", "add", "attention"] = Field(
        "mean", description="Graph pooling over real nodes: mean, sum, or attention-weighted sum (gated)."
    )

    # GraphCL augmentation (random views).
    augmentations: list[Augmentation] = Field(
        default_factory=lambda: ["node_drop", "subgraph"],
        min_length=1,
        description="Augmentations random views draw from (GraphCL: node_drop, edge_perturb, attr_mask, subgraph).",
    )
    view_mode: Literal["one", "all"] = Field(
        "one",
        description="'one': each view applies one augmentation drawn uniformly from `augmentations` (GraphCL); "
        "'all': each view applies all of them, in the listed order.",
    )
    node_drop: float = Field(0.2, ge=0.0, lt=1.0, description="Share of nodes dropped (with their edges).")
    edge_perturb: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of edges dropped; as many new random edges are added."
    )
    attr_mask: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of nodes whose features are replaced by the 'masked' value."
    )
    subgraph: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of nodes left out of the sampled connected subgraph."
    )
    subgraph_method: Literal["random_walk", "bfs"] = Field(
        "random_walk", description="How the subgraph grows from a random start node: random walk or random BFS."
    )

    # Masked node prediction (GraphMAE-style replace masking).
    mask_target: int = Field(
        0, ge=0, description="Node feature column predicted by masked node prediction (0: atom type)."
    )
    mask_min_nodes: int = Field(1, ge=0, description="Nodes masked per graph at least (never more than it has).")

    @model_validator(mode="after")
    def _check(self) -> GraphOptions:
        if any(v < 1 for v in self.node_vocab) or any(v < 1 for v in self.edge_vocab):
            raise ValueError("node_vocab and edge_vocab entries must be >= 1")
        if self.mask_target >= len(self.node_vocab):
            raise ValueError(
                f"mask_target {self.mask_target} is not a node feature column (there are {len(self.node_vocab)})"
            )
        if self.gnn == "gat" and self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")
        if len(set(self.augmentations)) != len(self.augmentations):
            raise ValueError(f"augmentations lists one twice: {self.augmentations}")
        return self
