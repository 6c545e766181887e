"""Released Hugging Face vision (ViT) and audio (wav2vec2, AST) encoders: outputs, preprocessing, training, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from mmssl.build import build_encoder
from mmssl.compiler import compile_recipe
from mmssl.encoders.base import ReleasedError, load_released
from mmssl.modality import ModalityBatch
from mmssl.recipe import EncoderSpec, RecipeError
from mmssl.train.trainer import train

transformers = pytest.importorskip("transformers")
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("w2v")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
    )
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ast")
    torch.manual_seed(0)
    config = transformers.ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
        max_length=64,
        num_mel_bins=32,
    )
    transformers.ASTModel(config).save_pretrained(folder)
    transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(folder)
    return folder


def spec(path: Path, **extra) -> EncoderSpec:
    return EncoderSpec(library="transformers", path=str(path), **extra)


def test_vit_matches_transformers_and_reads_its_processor(vit_dir: Path) -> None:
    released = load_released(spec(vit_dir), Path("."))
    encoder = released.encoder.eval()
    reference = transformers.ViTModel.from_pretrained(vit_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = encoder(ModalityBatch(pixels))
        hidden = reference(pixel_values=pixels).last_hidden_state
    assert encoder.width == 32 and out.tokens.shape == (2, 16, 32)
    assert (out.tokens - hidden[:, 1:]).abs().max() < 1e-5
    assert (out.pooled - hidden[:, 0]).abs().max() < 1e-5
    mean_pooled = load_released(spec(vit_dir, pooling="mean"), Path(".")).encoder.eval()
    with torch.no_grad():
        assert (mean_pooled(ModalityBatch(pixels)).pooled - hidden[:, 1:].mean(1)).abs().max() < 1e-5
    p = released.preprocessing
    assert (p.input, p.image_size, p.patch_size) == ("pixels", 32, 8)
    assert p.mean == pytest.approx(MEAN) and p.std == pytest.approx(STD)
    assert released.export["path"] == str(vit_dir) and released.export["architecture"] == "ViTModel"
    stem, blocks = encoder.layer_stack()
    assert len(stem) == 1 and len(blocks) == 2
    with pytest.raises(ReleasedError, match="keep"):
        encoder(ModalityBatch(pixels, keep=torch.zeros(2, 4, dtype=torch.long)))


def test_vit_without_processor_falls_back(tmp_path: Path, vit_dir: Path) -> None:
    transformers.ViTModel.from_pretrained(vit_dir).save_pretrained(tmp_path)
    p = load_released(spec(tmp_path), Path(".")).preprocessing
    assert p.image_size == 32 and p.mean == [0.5] * 3 and p.std == [0.5] * 3


def image_recipe(vit_dir: Path, tmp_path: Path, encoder: dict) -> dict:
    return {
        "name": "released_vit",
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 64}},
        "modalities": {
            "image": {
                "options": {"channels": 1, "image_size": 28, "patch_size": 7, "crop_scale": [0.5, 1.0]},
                "encoder": {"library": "transformers", "path": str(vit_dir), **encoder},
            }
        },
        "model": {"embed_dim": 16},
        "objectives": [{"name": "simclr", "modality": "image", "proj_dim": 16, "hidden_dim": 32}],
        "train": {"steps": 2, "batch_size": 8, "lr": 1e-2, "log_every": 1},
    }


def plan_of(tree: dict, base: Path):
    return compile_recipe(tree, base_dir=base)


def test_vit_preprocessing_reaches_image_options(vit_dir: Path, tmp_path: Path) -> None:
    plan = plan_of(image_recipe(vit_dir, tmp_path, {}), tmp_path)
    options = plan.modality_options["image"]
    assert (options.image_size, options.patch_size, options.channels) == (32, 8, 3)
    assert options.mean == pytest.approx(MEAN) and options.std == pytest.approx(STD)


def test_vit_lora_trains_only_adapters_and_last_block(vit_dir: Path, tmp_path: Path) -> None:
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"], "unfreeze_last_blocks": 1}
    plan = plan_of(image_recipe(vit_dir, tmp_path, {"train": "lora", "lora": lora}), tmp_path)
    encoder = build_encoder(plan, "image", None)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" in n} and all("lora_" in n or ".layers.1." in n for n in trainable)
    assert sum("lora_" in n for n in trainable) == 2 * 2 * 2  # 2 blocks x (query, value) x (A, B)
    assert any(".layers.1." in n and "lora_" not in n for n in trainable)

    result = train(plan, tmp_path / "run")
    assert result.finished and result.step == 2
    saved = load_file(tmp_path / "run" / "model.safetensors")
    original = plan.released["image"].encoder.state_dict()  # the loaded weights, in-memory names
    changed_block = unchanged = 0
    for key, value in saved.items():
        if not key.startswith("encoders.image.model.") or "lora_" in key:
            continue
        name = key.removeprefix("encoders.image.").replace(".base_layer", "")
        assert name in original, name
        same = torch.equal(value, original[name])
        if ".layers.1." in name and "lora" not in name and not same:
            changed_block += 1
        if ".layers.1." not in name:
            assert same, f"frozen weight {name} changed"
            unchanged += 1
    assert unchanged > 10 and changed_block > 0
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)


def test_unknown_target_module_lists_names(vit_dir: Path, tmp_path: Path) -> None:
    lora = {"r": 4, "target_modules": ["nope"]}
    plan = plan_of(image_recipe(vit_dir, tmp_path, {"train": "lora", "lora": lora}), tmp_path)
    with pytest.raises(ReleasedError, match="q_proj"):
        build_encoder(plan, "image", None)


def test_missing_folder_names_the_path(tmp_path: Path, vit_dir: Path) -> None:
    tree = image_recipe(tmp_path / "missing", tmp_path, {})
    with pytest.raises(RecipeError, match=r"modalities\.image\.encoder\.path: .*missing does not exist"):
        plan_of(tree, tmp_path)  # caught by validation, before anything loads


# -- audio --


def clips(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(n) / 16000 for n in lengths]
    return [(0.3 * np.sin(2 * np.pi * 440 * x) + 0.05 * rng.standard_normal(len(x))).astype(np.float32) for x in t]


def test_wav2vec2_matches_transformers_with_padding(w2v_dir: Path) -> None:
    from mmssl_audio import plugin

    released = load_released(spec(w2v_dir), Path("."))
    assert released.preprocessing.input == "waveform" and released.preprocessing.sample_rate == 16000
    options = plugin.adopt(plugin.parse_options({}), released.preprocessing)
    assert options.features == "waveform"
    processor = plugin.build_processor(options, None)
    waves = clips([3000, 2000])
    batch = processor.collate([processor.prepare(processor.decode(w)) for w in waves])
    assert batch.data.shape == (2, 3000) and batch.padding_mask.shape == (2, 3000)
    encoder = released.encoder.eval()
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(w2v_dir)
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt", return_attention_mask=True)
    reference = transformers.Wav2Vec2Model.from_pretrained(w2v_dir).eval()
    with torch.no_grad():
        out = encoder(batch)
        hidden = reference(**inputs).last_hidden_state
        valid = reference._get_feature_vector_attention_mask(hidden.shape[1], inputs["attention_mask"])
    assert (out.tokens - hidden).abs().max() < 1e-5
    assert torch.equal(out.padding_mask, ~valid.bool())
    pooled = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
    assert (out.pooled - pooled).abs().max() < 1e-5
    stem, blocks = encoder.layer_stack()
    assert len(blocks) == 2 and stem
    with pytest.raises(ValueError, match="features is waveform"):
        processor.mask(batch, 0.5)
    with pytest.raises(ValueError, match="features is waveform"):
        plugin.build_encoder(options, processor)


def test_audio_adopt_rejects_mismatches(w2v_dir: Path, ast_dir: Path) -> None:
    from mmssl_audio import plugin

    w2v = load_released(spec(w2v_dir), Path(".")).preprocessing
    with pytest.raises(ValueError, match="options.sample_rate"):
        plugin.adopt(plugin.parse_options({"sample_rate": 8000}), w2v)
    with pytest.raises(ValueError, match="options.features"):
        plugin.adopt(plugin.parse_options({"features": "log_mel"}), w2v)
    ast = load_released(spec(ast_dir), Path(".")).preprocessing
    with pytest.raises(ValueError, match="options.n_mels"):
        plugin.adopt(plugin.parse_options({"n_mels": 64}), ast)
    with pytest.raises(ValueError, match="tokens"):
        plugin.adopt(plugin.parse_options({}), type(ast)(input="tokens"))


def test_ast_matches_transformers(ast_dir: Path) -> None:
    from mmssl_audio import plugin

    released = load_released(spec(ast_dir), Path("."))
    p = released.preprocessing
    assert (p.input, p.n_mels, p.sample_rate, p.max_length) == ("log_mel", 32, 16000, 64)
    assert p.mean == pytest.approx([-4.2677393]) and p.std == pytest.approx([2 * 4.5689974])
    options = plugin.adopt(plugin.parse_options({}), p)
    assert (options.features, options.n_mels, options.max_seconds) == ("log_mel", 32, pytest.approx(0.64))
    assert options.mean == pytest.approx(-4.2677393)
    processor = plugin.build_processor(options, None)
    batch = processor.collate([processor.prepare(processor.decode(w)) for w in clips([8000, 4000])])
    mel = batch.data["mel"][:, 0]
    encoder = released.encoder.eval()
    reference = transformers.ASTModel.from_pretrained(ast_dir).eval()
    padded = torch.nn.functional.pad(mel, (0, 64 - mel.shape[-1]))
    with torch.no_grad():
        out = encoder(batch)
        hidden = reference(input_values=padded.transpose(1, 2)).last_hidden_state
    assert (out.tokens - hidden[:, 2:]).abs().max() < 1e-5
    assert (out.pooled - (hidden[:, 0] + hidden[:, 1]) / 2).abs().max() < 1e-5
    # 4 time patches of 16 frames x 2 frequency patches; the 4000-sample clip has 26 frames -> 2 real time patches
    assert out.padding_mask[1].tolist() == [False, False, True, True] * 2
    assert not out.padding_mask[0].any()


def write_manifest(folder: Path, count: int = 8) -> Path:
    rows = []
    for i, wave in enumerate(clips([4000 + 400 * i for i in range(count)], seed=1)):
        sf.write(folder / f"clip{i}.wav", wave, 16000)
        rows.append({"audio": f"clip{i}.wav"})
    manifest = folder / "clips.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.mark.parametrize("which", ["w2v", "ast"])
def test_audio_encoders_train(which: str, w2v_dir: Path, ast_dir: Path, tmp_path: Path) -> None:
    folder = w2v_dir if which == "w2v" else ast_dir
    tree = {
        "name": f"released_{which}",
        "data": {"train": {"source": "manifest", "path": str(write_manifest(tmp_path)), "path_columns": ["audio"]}},
        "modalities": {
            "audio": {"options": {"crop_seconds": 0.2}, "encoder": {"library": "transformers", "path": str(folder)}}
        },
        "model": {"embed_dim": 16},
        "objectives": [{"name": "simclr", "modality": "audio", "proj_dim": 16, "hidden_dim": 32}],
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1},
    }
    plan = plan_of(tree, tmp_path)
    result = train(plan, tmp_path / "run")
    assert result.finished and result.step == 2
    expected = "waveform" if which == "w2v" else "log_mel"
    assert plan.modality_options["audio"].features == expected
