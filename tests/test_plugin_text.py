"""Tests of the first-party text modality plugin (``plugins/mmssl_text``)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from tolerances import F32

from mmssl.modality import ModalityBatch, Processor
from mmssl_text import (
    TextOptions,
    TextProcessor,
    TokenizerError,
    build_encoder,
    build_processor,
    decode_text,
    load_processor,
    plugin,
)

CAPTIONS = [
    "A plain white T-shirt with short sleeves and a round neck.",
    "A black cotton top with long sleeves.",
    "Slim blue denim trousers with a high waist.",
    "Wide grey trousers with pleats at the front.",
    "A knitted red pullover with a ribbed collar.",
    "A warm wool pullover in dark green with a zip.",
    "A short summer dress with a floral print.",
    "A long black evening dress without sleeves.",
    "A beige trench coat with a belt and large buttons.",
    "A padded winter coat with a hood and deep pockets.",
    "Flat leather sandals with thin straps.",
    "Sandals with a cork sole and a buckle at the ankle.",
    "A white cotton shirt with a pointed collar and buttons.",
    "A checked flannel shirt in red and black.",
    "Running sneakers with a thick white sole and laces.",
    "Low canvas sneakers in navy blue.",
    "A small leather bag with a long shoulder strap.",
    "A large tote bag made of brown canvas.",
    "Ankle boots of black suede with a block heel.",
    "Tall leather boots with a side zip and a low heel.",
    "A striped T-shirt in navy and white.",
    "A cropped top in pale pink with thin straps.",
    "Loose linen trousers in a sand colour.",
    "A hooded pullover in light grey with a front pocket.",
    "A wrap dress in emerald green with a tie belt.",
    "A short denim jacket with metal buttons.",
    "A quilted coat in olive with a stand collar.",
    "Beach sandals made of rubber in bright yellow.",
    "A denim shirt with two chest pockets.",
    "High-top sneakers in white leather with a red stripe.",
    "A backpack of black nylon with many zips.",
    "Hiking boots with a rugged sole and thick laces.",
    "A sleeveless top with a lace trim.",
    "Pleated trousers in charcoal wool.",
    "A cardigan pullover with wooden buttons.",
    "A maxi dress with a pattern of tiny dots.",
    "A raincoat in bright orange with a hood.",
    "Heeled sandals in gold with an ankle strap.",
    "A short-sleeved shirt with a tropical print.",
    "Slip-on sneakers in grey mesh.",
]


@pytest.fixture(scope="module")
def options() -> TextOptions:
    return TextOptions(vocab_size=300, max_length=24, width=32, depth=2, heads=4, span_deletion=0.2)


@pytest.fixture(scope="module")
def processor(options: TextOptions) -> TextProcessor:
    return build_processor(options, CAPTIONS)


def _tiny_tokenizer(special: list[str], unk: str) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=special, show_progress=False)
    tokenizer.train_from_iterator(CAPTIONS, trainer=trainer)
    return tokenizer


# ---------------------------------------------------------------- options


def test_options_defaults_forbid_extra_and_describe_every_field() -> None:
    opts = TextOptions()
    assert (opts.tokenizer, opts.vocab_size, opts.max_length, opts.width, opts.pool) == (None, 8000, 64, 256, "cls")
    assert (opts.span_deletion, opts.mask_replace_prob, opts.mask_random_prob) == (0.1, 0.8, 0.1)
    assert all(field.description for field in TextOptions.model_fields.values())
    with pytest.raises(ValidationError):
        TextOptions(vocab=100)
    with pytest.raises(ValidationError):
        TextOptions(mask_replace_prob=0.9, mask_random_prob=0.2)


# ---------------------------------------------------------------- tokenizer


def test_trained_tokenizer_wraps_in_cls_sep(processor: TextProcessor) -> None:
    specials = processor.specials
    assert (specials.pad, specials.unk, specials.cls, specials.sep, specials.mask) == (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    assert processor.pad_id == 0 and processor.mask_id == 4
    assert 50 < processor.vocab_size <= 300
    for caption in CAPTIONS[:10]:
        ids = processor.prepare(caption)
        assert ids[0] == specials.cls_id and ids[-1] == specials.sep_id
        assert len(ids) > 4
        assert all(i not in specials.special_ids for i in ids[1:-1])
    # Lower-casing: these tokenize the same; accents are kept by default (test_trained_tokenizer_keeps_accents...).
    assert processor.prepare("A RED Dress") == processor.prepare("a red dress") != processor.prepare("à réd dress")


def test_truncation_keeps_sep(processor: TextProcessor, options: TextOptions) -> None:
    ids = processor.prepare(" ".join(CAPTIONS))
    assert len(ids) == options.max_length
    assert ids[0] == processor.specials.cls_id and ids[-1] == processor.specials.sep_id


def test_training_needs_a_corpus(options: TextOptions) -> None:
    with pytest.raises(ValueError, match="no training texts"):
        build_processor(options, [])


def test_loads_hugging_face_folder_and_file(tmp_path: Path, options: TextOptions) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = _tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    for where in (tmp_path, tmp_path / "tokenizer.json"):
        proc = build_processor(options.model_copy(update={"tokenizer": str(where)}), corpus=None)
        specials = proc.specials
        assert proc.pad_id == tokenizer.token_to_id("[PAD]")
        assert proc.mask_id == tokenizer.token_to_id("[MASK]")
        ids = proc.prepare("A red dress with buttons.")
        # No post-processor in the saved tokenizer: the plugin adds [CLS] ... [SEP].
        assert ids[0] == specials.cls_id == tokenizer.token_to_id("[CLS]")
        assert ids[-1] == specials.sep_id == tokenizer.token_to_id("[SEP]")
        assert len(proc.prepare(" ".join(CAPTIONS))) == options.max_length
        assert proc.tokenizer.padding is None


def test_loads_roberta_style_tokens_named_by_config(tmp_path: Path, options: TextOptions) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = _tiny_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    fast.save_pretrained(tmp_path)
    proc = build_processor(options.model_copy(update={"tokenizer": str(tmp_path)}))
    specials = proc.specials
    assert (specials.cls, specials.sep, specials.pad, specials.mask, specials.unk) == (
        "<s>",
        "</s>",
        "<pad>",
        "<mask>",
        "<unk>",
    )
    assert proc.pad_id == 1 and proc.mask_id == 4
    ids = proc.prepare("a long dress")
    assert ids[0] == 0 and ids[-1] == 2
    batch = proc.collate([ids, ids[:3]])
    assert batch.data["ids"][1, 3:].eq(1).all()


def test_special_tokens_from_config_override_guesses(tmp_path: Path, options: TextOptions) -> None:
    tokenizer = _tiny_tokenizer(["<|unk|>", "<|pad|>", "<|hide|>", "<|start|>", "<|end|>"], "<|unk|>")
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = {"pad_token": "<|pad|>", "mask_token": {"content": "<|hide|>", "special": True}, "bos_token": "<|start|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    proc = build_processor(options.model_copy(update={"tokenizer": str(tmp_path)}))
    assert (proc.specials.pad, proc.specials.mask) == ("<|pad|>", "<|hide|>")
    assert (proc.specials.cls, proc.specials.sep) == ("<|start|>", "<|end|>")
    assert proc.specials.unk is None  # not named anywhere and no standard name
    assert set(proc.specials.special_ids) == {0, 1, 2, 3, 4}  # added special tokens count too
    ids = proc.prepare("a dress")
    assert ids[0] == 3 and ids[-1] == 4


def test_missing_mask_token_is_a_clear_error(tmp_path: Path, options: TextOptions) -> None:
    tokenizer = _tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[UNK]")
    file = tmp_path / "tokenizer.json"
    tokenizer.save(str(file))
    with pytest.raises(TokenizerError, match="mask token") as info:
        build_processor(options.model_copy(update={"tokenizer": str(tmp_path)}))
    assert str(file) in str(info.value)
    with pytest.raises(TokenizerError, match="not found"):
        build_processor(options.model_copy(update={"tokenizer": str(tmp_path / "sub")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        build_processor(options.model_copy(update={"tokenizer": str(tmp_path / "empty")}))


# ---------------------------------------------------------------- decode / augment / collate


def test_decode(tmp_path: Path, processor: TextProcessor) -> None:
    text = "Ein Kleid für den Sommer."
    file = tmp_path / "caption.txt"
    file.write_text(text, encoding="utf-8")
    assert processor.decode(text) == text
    assert processor.decode(file) == text
    assert processor.decode(text.encode("utf-8")) == text
    assert decode_text(bytearray(text.encode("utf-8"))) == text
    with pytest.raises(TypeError, match="float"):
        processor.decode(3.5)
    with pytest.raises(TypeError, match="ndarray"):
        processor.decode(np.zeros(3))


def test_augment_deletes_one_contiguous_span(processor: TextProcessor, options: TextOptions) -> None:
    specials = processor.specials
    text = CAPTIONS[9]
    ids = processor.prepare(text)
    n = len(ids) - 2
    expected = round(options.span_deletion * n)
    assert expected >= 2
    starts = set()
    for seed in range(30):
        view = processor.augment(text, np.random.default_rng(seed))
        assert view == processor.augment(text, np.random.default_rng(seed))  # determinism
        assert view == processor.augment(ids, np.random.default_rng(seed))  # text and ids agree
        assert len(view) == len(ids) - expected
        assert view[0] == specials.cls_id and view[-1] == specials.sep_id
        start = next((i for i in range(len(view)) if view[i] != ids[i]), len(view))
        assert view == ids[:start] + ids[start + expected :]  # one contiguous span
        starts.add(start)
    assert len(starts) > 3  # the span moves with the seed
    assert min(starts) >= 1 and max(starts) <= len(ids) - 1 - expected


def test_augment_without_span_deletion_is_identity(processor: TextProcessor) -> None:
    proc = TextProcessor(
        processor.tokenizer, processor.specials, processor.options.model_copy(update={"span_deletion": 0})
    )
    ids = proc.prepare(CAPTIONS[3])
    assert proc.augment(CAPTIONS[3], np.random.default_rng(0)) == ids
    short = proc.prepare("dress")
    assert processor.augment(short, np.random.default_rng(0)) == short  # never deletes the last content token


def test_collate_pads_to_longest(processor: TextProcessor) -> None:
    samples = [processor.prepare(c) for c in CAPTIONS[:3]] + [processor.prepare("a top")]
    batch = processor.collate(samples)
    ids, padding = batch.data["ids"], batch.padding_mask
    longest = max(len(s) for s in samples)
    assert ids.shape == padding.shape == (4, longest)
    assert ids.dtype == torch.long and padding.dtype == torch.bool
    for row, sample in enumerate(samples):
        assert ids[row, : len(sample)].tolist() == sample
        assert not padding[row, : len(sample)].any() and padding[row, len(sample) :].all()
        assert ids[row, len(sample) :].eq(processor.pad_id).all()
    assert len(batch) == 4
    with pytest.raises(ValueError):
        processor.collate([])


# ---------------------------------------------------------------- masking


def _big_batch(processor: TextProcessor, rows: int) -> ModalityBatch:
    rng = np.random.default_rng(0)
    samples = [processor.augment(CAPTIONS[i % len(CAPTIONS)], rng) for i in range(rows)]
    return processor.collate(samples)


def test_mask_never_chooses_special_or_padding_and_keeps_targets(processor: TextProcessor) -> None:
    batch = _big_batch(processor, 64)
    ids = batch.data["ids"]
    out = processor.mask(batch, 0.3, torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(processor.specials.special_ids))
    assert out.kind == "categorical" and out.num_classes == processor.vocab_size
    assert out.mask.shape == ids.shape and out.mask.dtype == torch.bool
    assert not (out.mask & (special | batch.padding_mask)).any()
    assert torch.equal(out.target, ids)
    assert torch.equal(out.batch.padding_mask, batch.padding_mask)
    new = out.batch.data["ids"]
    assert torch.equal(new[~out.mask], ids[~out.mask])  # only chosen positions change
    assert int(new.max()) < processor.vocab_size
    assert torch.equal(batch.data["ids"], ids)  # the input batch is not modified
    again = processor.mask(batch, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(again.mask, out.mask) and torch.equal(again.batch.data["ids"], new)


def test_mask_at_least_one_per_row(processor: TextProcessor) -> None:
    samples = [processor.prepare(c) for c in ("a top", "dress", *CAPTIONS[:6])] + [[processor.specials.cls_id]]
    batch = processor.collate(samples)
    for seed in range(10):
        out = processor.mask(batch, 0.01, torch.Generator().manual_seed(seed))
        assert out.mask[:-1].sum(1).ge(1).all()
        assert not out.mask[-1].any()  # nothing maskable in the last row


def test_mask_80_10_10_split(processor: TextProcessor) -> None:
    batch = _big_batch(processor, 1024)
    ids = batch.data["ids"]
    out = processor.mask(batch, 0.5, torch.Generator().manual_seed(123))
    chosen = out.mask
    total = int(chosen.sum())
    assert total >= 5000
    maskable = ~torch.isin(ids, torch.tensor(processor.specials.special_ids)) & ~batch.padding_mask
    assert abs(total / int(maskable.sum()) - 0.5) < 0.03
    new = out.batch.data["ids"][chosen]
    original = ids[chosen]
    replaced = (new == processor.mask_id).float().mean().item()
    randomised = ((new != processor.mask_id) & (new != original)).float().mean().item()
    kept = (new == original).float().mean().item()
    assert abs(replaced - 0.8) < 0.03
    assert abs(randomised - 0.1) < 0.03
    assert abs(kept - 0.1) < 0.03
    assert not torch.isin(new[new != processor.mask_id], torch.tensor(processor.specials.special_ids)).any()


def test_mask_rejects_bad_ratio(processor: TextProcessor) -> None:
    batch = processor.collate([processor.prepare("a top")])
    with pytest.raises(ValueError, match="ratio"):
        processor.mask(batch, 0.0)
    with pytest.raises(ValueError, match="ratio"):
        processor.mask(batch, 1.5)


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encoder_shapes_and_padding_invariance(processor: TextProcessor, options: TextOptions, pool: str) -> None:
    torch.manual_seed(0)
    opts = options.model_copy(update={"pool": pool})
    encoder = build_encoder(opts, processor).eval()
    assert encoder.width == opts.width
    short, long = processor.prepare("a red dress"), processor.prepare(CAPTIONS[9])
    with torch.no_grad():
        alone = encoder(processor.collate([short]))
        both = encoder(processor.collate([short, long]))
    assert both.tokens.shape == (2, len(long), opts.width)
    assert both.pooled.shape == (2, opts.width)
    assert both.padding_mask.shape == (2, len(long))
    assert both.padding_mask[0, len(short) :].all() and not both.padding_mask[1].any()
    torch.testing.assert_close(both.pooled[0], alone.pooled[0], **F32)
    torch.testing.assert_close(both.tokens[0, : len(short)], alone.tokens[0], **F32)


def test_encoder_dropout_views_differ_and_masked_batch_runs(processor: TextProcessor, options: TextOptions) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(options, processor).train()
    batch = processor.collate([processor.prepare(c) for c in CAPTIONS[:4]])
    first, second = encoder(batch).pooled, encoder(batch).pooled
    assert not torch.allclose(first, second)  # SimCSE: dropout alone makes two views
    masked = processor.mask(batch, 0.15, torch.Generator().manual_seed(0))
    out = encoder(masked.batch)
    assert out.tokens.shape[:2] == masked.mask.shape
    out.pooled.sum().backward()
    assert encoder.embedder.word.weight.grad is not None
    too_long = ModalityBatch(data={"ids": torch.zeros(1, options.max_length + 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="max_length"):
        encoder(too_long)


# ---------------------------------------------------------------- save / load / plugin


def test_save_load_round_trip(tmp_path: Path, processor: TextProcessor, options: TextOptions) -> None:
    processor.save(tmp_path / "text")
    assert (tmp_path / "text" / "tokenizer.json").is_file()
    loaded = plugin.load_processor(options, tmp_path / "text")
    assert loaded.specials == processor.specials
    assert loaded.vocab_size == processor.vocab_size and loaded.pad_id == processor.pad_id
    for caption in CAPTIONS:
        assert loaded.prepare(caption) == processor.prepare(caption)
        assert loaded.augment(caption, np.random.default_rng(1)) == processor.augment(caption, np.random.default_rng(1))
    batch = processor.collate([processor.prepare(c) for c in CAPTIONS[:8]])
    a = processor.mask(batch, 0.2, torch.Generator().manual_seed(5))
    b = loaded.mask(batch, 0.2, torch.Generator().manual_seed(5))
    assert torch.equal(a.batch.data["ids"], b.batch.data["ids"]) and torch.equal(a.mask, b.mask)
    # A pickled processor (data-loader workers) behaves the same.
    clone = pickle.loads(pickle.dumps(processor))
    assert clone.prepare(CAPTIONS[0]) == processor.prepare(CAPTIONS[0])
    # A plain tokenizer folder also loads (special tokens found again).
    (tmp_path / "text" / "text_special_tokens.json").unlink()
    assert load_processor(options, tmp_path / "text").specials == processor.specials


def test_plugin_is_found_through_entry_point(options: TextOptions) -> None:
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="mmssl.modalities") if ep.name == "text"]
    assert entry.load() is plugin
    from mmssl.plugins import get_modality

    found = get_modality("text")
    assert found is plugin
    assert found.capabilities.views and found.capabilities.masking == "categorical" and found.capabilities.pairing
    assert found.description and "\n" not in found.description
    assert isinstance(found.parse_options({"vocab_size": 300}), TextOptions)
    proc = found.build_processor(options, CAPTIONS)
    assert isinstance(proc, Processor)
    assert isinstance(found.build_encoder(options, proc), torch.nn.Module)


def test_trained_tokenizer_keeps_accents_by_default() -> None:
    from mmssl_text import train_tokenizer

    texts = ["el año nuevo", "un ano", "año tras año", "ano y año"] * 5
    kept = train_tokenizer(texts, vocab_size=64)
    assert "año" in kept.encode("año").tokens and kept.encode("año").ids != kept.encode("ano").ids
    stripped = train_tokenizer(texts, vocab_size=64, strip_accents=True)
    assert stripped.encode("año").ids == stripped.encode("ano").ids
    assert TextOptions().strip_accents is False


def test_ascii_captions_tokenize_as_with_accent_stripping() -> None:
    """The quickstart's captions are ASCII: keeping accents changes nothing the tokenizer trains on or reads."""
    from mmssl.datasets.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES
    from mmssl_text import train_tokenizer

    captions = [template.format(name) for template in CAPTION_TEMPLATES for name in CLASS_NAMES]
    new, old = train_tokenizer(captions, 400), train_tokenizer(captions, 400, strip_accents=True)
    for caption in [*captions, "A Photo Of Ankle-Boots!"]:
        assert new.normalizer.normalize_str(caption) == old.normalizer.normalize_str(caption) == caption.lower()


def test_trained_tokenizer_is_the_same_in_every_run() -> None:
    """tokenizers' WordPiece trainer numbers the ``##`` tokens in hash order and breaks merge ties by those
    numbers (huggingface/tokenizers#1794): on the quickstart's captions ten plain trainings gave ten different
    tokenizers (and twelve on the fortunes, seven vocabularies). Ours hands it the continuation tokens, sorted,
    and then makes them ordinary tokens again."""
    from mmssl.datasets.fashion_mnist import CAPTION_TEMPLATES, CLASS_NAMES
    from mmssl_text import train_tokenizer
    from mmssl_text.tokenizer import SPECIAL_TOKENS, find_special_tokens

    captions = [template.format(name) for template in CAPTION_TEMPLATES for name in CLASS_NAMES]
    trained = {train_tokenizer(captions, 400).to_str() for _ in range(10)}
    assert len(trained) == 1
    tokenizer = train_tokenizer(captions, 400)
    vocab = tokenizer.get_vocab()
    assert {"##s", "##t"} <= set(vocab)  # continuation tokens are in the vocabulary ...
    assert [t.content for t in tokenizer.get_added_tokens_decoder().values()] == list(SPECIAL_TOKENS)  # ... not added
    assert find_special_tokens(tokenizer, origin="trained").special_ids == tuple(range(len(SPECIAL_TOKENS)))
    tokens = tokenizer.encode("a photo of a sneaker.").tokens
    assert tokens == ["[CLS]", "a", "photo", "of", "a", "sneaker", ".", "[SEP]"]
