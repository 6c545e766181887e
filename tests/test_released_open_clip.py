"""open_clip towers as released encoders: loading, tokenizer equivalence and outputs equal to open_clip's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from mmssl.encoders.base import ReleasedError, load_released  # noqa: E402
from mmssl.modality import ModalityBatch  # noqa: E402
from mmssl.recipe import EncoderSpec  # noqa: E402

NAME = "mmssl-test-tiny-clip"
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TEXTS = [
    "a photo of a cat",
    "Hello, World! It's 3 dogs' toys.",
    "  spaces   and\ttabs  ",
    "Über café, naïve façade",
    "x" * 30 + " a long caption with far more words than the tiny context length holds",
    "T-shirt/top",
]


def make_tiny_clip(folder: Path) -> tuple[torch.nn.Module, Path, Path]:
    """Register the tiny config and save a random model as .safetensors and as a DDP-style torch file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / f"{NAME}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "tiny.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "tiny.pt")
    return model, folder / "tiny.safetensors", folder / "tiny.pt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    return make_tiny_clip(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path_factory.getbasetemp() / "mmssl-cache"))


def spec(path: Path, tower: str, **extra) -> EncoderSpec:
    return EncoderSpec(library="open_clip", model=NAME, path=str(path), tower=tower, **extra)


def text_processor(folder: str, max_length: int = 16):
    from mmssl_text.options import TextOptions
    from mmssl_text.processor import build_processor

    return build_processor(TextOptions(tokenizer=folder, max_length=max_length))


def test_tokenizer_matches_open_clip(tiny) -> None:
    _, weights, _ = tiny
    released = load_released(spec(weights, "text"), Path("."))
    assert released.preprocessing.input == "tokens" and released.preprocessing.max_length == 16
    processor = text_processor(released.preprocessing.tokenizer)
    reference = open_clip.get_tokenizer(NAME)(TEXTS)
    eot = open_clip.get_tokenizer(NAME).eot_token_id
    for text, row in zip(TEXTS, reference.tolist(), strict=True):
        expected = row[: row.index(eot) + 1]  # strip open_clip's zero padding
        assert processor.prepare(text) == expected, text
    specials = processor.specials
    assert (specials.pad_id, specials.cls_id, specials.sep_id) == (eot, eot - 1, eot)
    assert specials.mask_id == 49408  # an added token: no embedding, so mlm cannot train this tower


def test_text_tower_equals_encode_text(tiny) -> None:
    model, _, torch_file = tiny
    released = load_released(spec(torch_file, "text"), Path("."))  # the weights_only torch path
    encoder = released.encoder.eval()
    assert encoder.width == 16 and released.library == "open_clip"
    processor = text_processor(released.preprocessing.tokenizer)
    batch = processor.collate([processor.prepare(t) for t in TEXTS])  # padded with <end_of_text>
    with torch.no_grad():
        out = encoder(batch)
        expected = model.encode_text(open_clip.get_tokenizer(NAME)(TEXTS))
    assert out.pooled.shape == (len(TEXTS), 16)
    assert out.tokens.shape == (*batch.data["ids"].shape, 16)
    print(f"max abs diff text tower {(out.pooled - expected).abs().max().item():.3g}")
    assert (out.pooled - expected).abs().max().item() < 1e-5
    # No model weight outside the text tower (no visual.*, no logit_scale) is in the encoder.
    assert not any(k.startswith("visual") or "logit" in k for k in encoder.state_dict())
    stem, blocks = encoder.layer_stack()
    assert len(blocks) == 1 and encoder.positional_embedding in list(stem[1].parameters())


def test_image_tower_equals_encode_image(tiny) -> None:
    model, weights, _ = tiny
    released = load_released(spec(weights, "image"), Path("."))
    pre = released.preprocessing
    assert (pre.input, pre.image_size, pre.patch_size) == ("pixels", 32, 8)
    assert pre.mean == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    encoder = released.encoder.eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = encoder(ModalityBatch(pixels))
        expected = model.encode_image(pixels)
    assert out.tokens.shape == (3, 16, 16)
    print(f"max abs diff image tower {(out.pooled - expected).abs().max().item():.3g}")
    assert (out.pooled - expected).abs().max().item() < 1e-5
    assert all(k.startswith("visual.") for k in encoder.state_dict())
    with pytest.raises(ReleasedError, match="cannot drop hidden"):
        encoder(ModalityBatch(pixels, keep=torch.zeros(3, 4, dtype=torch.long)))


def test_checkpoint_errors_name_the_path(tiny, tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ReleasedError, match="nope.safetensors"):
        load_released(spec(missing, "image"), Path("."))
    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse_like()}, pickled)
    with pytest.raises(ReleasedError, match="object.pt.*weights_only"):
        load_released(spec(pickled, "image"), Path("."))
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(wrong))
    with pytest.raises(ReleasedError, match="wrong.safetensors.*does not fit"):
        load_released(spec(wrong, "text"), Path("."))


class _Namespace:
    pass


def argparse_like() -> _Namespace:
    """An object torch.load(weights_only=True) refuses to unpickle (as in training checkpoints with args)."""
    space = _Namespace()
    space.lr = 0.1
    return space
