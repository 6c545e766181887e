"""Released timm encoders: checkpoint loading, outputs, preprocessing, training and LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmssl.build import build_encoder
from mmssl.compiler import compile_recipe
from mmssl.encoders.base import ReleasedError, load_released
from mmssl.modality import ModalityBatch
from mmssl.recipe import EncoderSpec, RecipeError
from mmssl.train.trainer import train

timm = pytest.importorskip("timm")
KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 0}
NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, **KWARGS).eval()
    save_file(model.state_dict(), folder / "vit.safetensors")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, folder / "vit.pt")
    return model, folder / "vit.safetensors", folder / "vit.pt"


def spec(path: Path, **extra) -> EncoderSpec:
    return EncoderSpec(library="timm", model=NAME, path=str(path), kwargs=KWARGS, **extra)


@pytest.mark.parametrize("which", [1, 2])
def test_outputs_match_timm(checkpoints, which: int) -> None:
    model, *files = checkpoints
    released = load_released(spec(files[which - 1]), Path("."))
    encoder = released.encoder.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = encoder(ModalityBatch(pixels))
        features = model.forward_features(pixels)
        pooled = model.forward_head(features, pre_logits=True)
    assert encoder.width == 32 and out.tokens.shape == (2, 16, 32)
    assert (out.tokens - features[:, 1:]).abs().max() < 1e-5
    assert (out.pooled - pooled).abs().max() < 1e-5
    assert (out.pooled - features[:, 0]).abs().max() < 1e-5  # vit default global_pool is the class token
    p = released.preprocessing
    assert (p.input, p.image_size, p.patch_size) == ("pixels", 32, 8)
    assert p.mean == pytest.approx([0.5] * 3) and p.std == pytest.approx([0.5] * 3)
    assert released.library == "timm" and released.export["model"] == NAME and released.export["kwargs"] == KWARGS
    stem, blocks = encoder.layer_stack()
    assert len(blocks) == 2
    stem_params = {id(p) for m in stem for p in m.parameters()}
    assert {tuple(p.shape) for m in stem for p in m.parameters()} >= {(1, 1, 32), (1, 17, 32)}
    assert id(encoder.model.pos_embed) in stem_params


def test_mean_pooling(checkpoints) -> None:
    model, file, _ = checkpoints
    encoder = load_released(spec(file, pooling="mean"), Path(".")).encoder.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            encoder(ModalityBatch(pixels)).pooled - model.forward_features(pixels)[:, 1:].mean(1)
        ).abs().max() < 1e-5


def test_bad_checkpoints(tmp_path: Path, checkpoints) -> None:
    _, file, _ = checkpoints
    with pytest.raises(ReleasedError, match="nowhere.safetensors"):
        load_released(spec(tmp_path / "nowhere.safetensors"), Path("."))
    with pytest.raises(ReleasedError, match="does not fit"):
        load_released(EncoderSpec(library="timm", model=NAME, path=str(file), kwargs={**KWARGS, "depth": 3}), Path("."))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleasedError, match="junk.pt"):
        load_released(spec(tmp_path / "junk.pt"), Path("."))


def recipe(file: Path, encoder: dict) -> dict:
    return {
        "name": "released_timm",
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 64}},
        "modalities": {
            "image": {
                "options": {"channels": 1, "crop_scale": [0.5, 1.0]},
                "encoder": {"library": "timm", "model": NAME, "path": str(file), "kwargs": KWARGS, **encoder},
            }
        },
        "model": {"embed_dim": 16},
        "objectives": [{"name": "simclr", "modality": "image", "proj_dim": 16, "hidden_dim": 32}],
        "train": {"steps": 2, "batch_size": 8, "lr": 1e-2, "log_every": 1},
    }


def plan_of(tree: dict, base: Path):
    return compile_recipe(tree, base_dir=base)


def test_preprocessing_reaches_options_and_full_training(checkpoints, tmp_path: Path) -> None:
    _, file, _ = checkpoints
    plan = plan_of(recipe(file, {}), tmp_path)
    options = plan.modality_options["image"]
    assert (options.image_size, options.patch_size, options.channels, options.mean) == (32, 8, 3, [0.5] * 3)
    result = train(plan, tmp_path / "run")
    assert result.finished and result.step == 2


def test_lora_trains_adapters_and_last_block(checkpoints, tmp_path: Path) -> None:
    _, file, _ = checkpoints
    lora = {"r": 4, "target_modules": ["qkv"], "unfreeze_last_blocks": 1}
    plan = plan_of(recipe(file, {"train": "lora", "lora": lora}), tmp_path)
    encoder = build_encoder(plan, "image", None)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert sum("lora_" in n for n in trainable) == 2 * 2  # 2 blocks x (A, B)
    assert all("lora_" in n or ".blocks.1." in n for n in trainable)
    assert any(".blocks.1." in n and "lora_" not in n for n in trainable)
    original = plan.released["image"].encoder.state_dict()
    result = train(plan, tmp_path / "run")
    assert result.finished
    saved = load_file(tmp_path / "run" / "model.safetensors")
    unchanged = changed = 0
    for key, value in saved.items():
        if not key.startswith("encoders.image.") or "lora_" in key:
            continue
        name = key.removeprefix("encoders.image.").replace(".base_layer", "")
        assert name in original, name
        if ".blocks.1." in name:
            changed += not torch.equal(value, original[name])
        else:
            assert torch.equal(value, original[name]), f"frozen weight {name} changed"
            unchanged += 1
    assert unchanged > 10 and changed > 0


def test_unknown_target_module_lists_names(checkpoints, tmp_path: Path) -> None:
    _, file, _ = checkpoints
    plan = plan_of(recipe(file, {"train": "lora", "lora": {"target_modules": ["query"]}}), tmp_path)
    with pytest.raises(ReleasedError, match="qkv"):
        build_encoder(plan, "image", None)


def test_missing_model_or_path_in_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"encoder\.path: .*absent\.safetensors does not exist"):
        plan_of(recipe(tmp_path / "absent.safetensors", {}), tmp_path)  # caught by validation
