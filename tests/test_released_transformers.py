"""Released transformers text encoders: loading, preprocessing, training modes (full, frozen, LoRA), lr decay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from released_text_models import make_tiny_bert

from mmssl.build import build_model, build_processors, load_source
from mmssl.compiler import compile_recipe
from mmssl.encoders.base import ReleasedError, resolve_path
from mmssl.recipe import RecipeError, parse_recipe
from mmssl.train.optim import build_optimizer, layer_scales

TEXTS = ["a photo of a trouser.", "an image of an ankle boot on a plain background.", "bag"]


def recipe(folder: Path, train: str = "full", **encoder: object) -> dict:
    spec = {"library": "transformers", "path": str(folder), "train": train, **encoder}
    if train == "lora" and "lora" not in encoder:
        spec["lora"] = {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}
    return {
        "name": "tiny_released_text",
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 32}},
        "modalities": {"text": {"column": "caption", "encoder": spec, "options": {"max_length": 128}}},
        "model": {"embed_dim": 8},
        "objectives": [
            {"name": "simclr", "modality": "text", "proj_dim": 8, "hidden_dim": 16},
            {"name": "mlm", "modality": "text", "mask_ratio": 0.3},
        ],
        "train": {"steps": 2, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "log_every": 1},
    }


def build(tmp_path: Path, tree: dict):
    plan = compile_recipe(tree, base_dir=tmp_path)
    processors = build_processors(plan, load_source(plan, "train"))
    return plan, processors, build_model(plan, processors)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_text_encoder_matches_transformers_with_mean_pooling(tmp_path: Path, bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    plan, processors, model = build(tmp_path, recipe(bert))
    # The plugin adopted the released tokenizer and the model's position limit (32 < the recipe's 128).
    assert plan.modality_options["text"].tokenizer == str(bert)
    assert plan.modality_options["text"].max_length == 32
    proc = processors["text"]
    batch = proc.collate([proc.prepare(t) for t in TEXTS])
    reference = AutoModel.from_pretrained(bert).eval()
    encoded = AutoTokenizer.from_pretrained(bert)(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch.data["ids"], encoded["input_ids"])
    with torch.no_grad():
        hidden = reference(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        out = model.eval().encoders["text"](batch)
    assert out.tokens.shape == hidden.shape
    assert torch.allclose(out.pooled, expected, atol=1e-6)


def test_cls_pooling_takes_the_first_token(tmp_path: Path, bert: Path) -> None:
    _, processors, model = build(tmp_path, recipe(bert, pooling="cls"))
    proc = processors["text"]
    with torch.no_grad():
        out = model.eval().encoders["text"](proc.collate([proc.prepare(t) for t in TEXTS]))
    assert torch.equal(out.pooled, out.tokens[:, 0])


def test_lora_trains_only_adapters_and_the_unfrozen_last_block(tmp_path: Path, bert: Path) -> None:
    lora = {"r": 2, "alpha": 4, "target_modules": ["query", "value"], "unfreeze_last_blocks": 1}
    _, _, model = build(tmp_path, recipe(bert, train="lora", lora=lora))
    trainable = {n for n, p in model.encoders["text"].named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".layer.1." in n for n in trainable)
    assert any(".layer.1.output.dense.weight" in n for n in trainable)  # the unfrozen block, in full
    assert not any("embeddings" in n for n in trainable)
    adapters = [n for n in trainable if "lora_" in n]
    # r=2 A and B for query and value in 2 layers: 2 layers x 2 modules x 2 matrices.
    assert len(adapters) == 8


def test_frozen_and_lora_runs_leave_frozen_weights_untouched(tmp_path: Path, bert: Path) -> None:
    from mmssl.run import load_run
    from mmssl.train.trainer import train

    released = {k: v.clone() for k, v in build(tmp_path, recipe(bert))[2].encoders["text"].state_dict().items()}
    for mode in ("frozen", "lora"):
        plan = compile_recipe(recipe(bert, train=mode), base_dir=tmp_path)
        assert train(plan, tmp_path / mode).finished
        after = load_run(tmp_path / mode).model.encoders["text"].state_dict()
        for key, value in after.items():
            base = key.replace(".base_layer", "")
            if "lora_" in key:
                continue
            assert torch.equal(value, released[base]), f"{mode}: {key} changed"
        if mode == "lora":
            moved = [k for k, v in after.items() if "lora_B" in k and v.abs().sum() > 0]
            assert moved, "LoRA B matrices start at zero and must have trained"


def test_layer_decay_scales_blocks_geometrically(tmp_path: Path, bert: Path) -> None:
    _, _, model = build(tmp_path, recipe(bert))
    encoder = model.encoders["text"]
    scales = layer_scales([encoder], 0.5)
    block0 = encoder.model.encoder.layer[0].attention.self.query.weight
    block1 = encoder.model.encoder.layer[1].attention.self.query.weight
    stem = encoder.model.embeddings.word_embeddings.weight
    assert scales[id(block1)] == 0.5 and scales[id(block0)] == 0.25 and scales[id(stem)] == 0.125
    optimizer = build_optimizer(model, 1e-3, 0.01, (0.9, 0.999), 0.5, model.encoders.values())
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(stem)] == pytest.approx(1.25e-4)
    assert lr_of[id(model.projections["text"].weight)] == pytest.approx(1e-3)
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == trainable


def test_bad_encoder_sections_name_the_key(tmp_path: Path, bert: Path) -> None:
    with pytest.raises(RecipeError, match=r"modalities\.text\.encoder.*lora"):
        parse_recipe(recipe(bert, train="lora", lora=None), base_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"modalities\.text\.encoder\.path: .*no-such-model does not exist"):
        compile_recipe(recipe(tmp_path / "no-such-model"), base_dir=tmp_path)
    # A hub id is not checked at validation (it may be in the cache); loading it offline fails with its name.
    compile_recipe(recipe("no-org/no-such-model"), base_dir=tmp_path, weights=False)
    with pytest.raises(RecipeError, match=r"modalities\.text\.encoder: .*no-org/no-such-model"):
        compile_recipe(recipe("no-org/no-such-model"), base_dir=tmp_path)
    bad_lora = recipe(bert, train="lora", lora={"r": 2, "target_modules": ["qkv_nope"]})
    plan = compile_recipe(bad_lora, base_dir=tmp_path)
    with pytest.raises(ReleasedError, match=r"target_modules.*query"):
        build_model(plan, build_processors(plan, load_source(plan, "train")))


def test_package_paths_resolve_without_importing(tmp_path: Path) -> None:
    assert Path(resolve_path("package:json", tmp_path)).name == "json"
    with pytest.raises(ReleasedError, match="not installed"):
        resolve_path("package:no_such_package_xyz/model", tmp_path)
    assert resolve_path("org/some-hub-id", tmp_path) == "org/some-hub-id"


def test_a_pickled_only_model_folder_is_refused(tmp_path: Path, bert: Path) -> None:
    """transformers is asked for safetensors only: a folder with just pytorch_model.bin is never unpickled."""
    import shutil

    from transformers import AutoModel

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy2(bert / "config.json", pickled / "config.json")
    torch.save(AutoModel.from_pretrained(bert).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(RecipeError, match=r"modalities\.text\.encoder: .*safetensors"):
        compile_recipe(recipe(pickled), base_dir=tmp_path)
