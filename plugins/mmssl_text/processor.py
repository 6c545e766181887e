"""The text processor: decoding, tokenizing, span-deletion views, padding and MLM masking."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from mmssl.modality import MaskedInput, ModalityBatch
from mmssl_text.baseline import bag_of_tokens
from mmssl_text.options import TextOptions
from mmssl_text.tokenizer import (
    TOKENIZER_FILE,
    SpecialTokens,
    TokenizerError,
    find_special_tokens,
    load_tokenizer,
    train_tokenizer,
)

SPECIALS_FILE = "text_special_tokens.json"


def decode_text(raw: Any) -> str:
    """Turn a raw value into text.

    Args:
        raw: A ``str`` (the text itself), a ``pathlib.Path`` to a text file (read as UTF-8) or UTF-8 ``bytes``.

    Raises:
        TypeError: ``raw`` is of another type.
    """
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Path):
        return raw.read_text(encoding="utf-8")
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw).decode("utf-8")
    raise TypeError(f"text modality cannot decode a {type(raw).__name__}; expected str, pathlib.Path or bytes")


class TextProcessor:
    """Tokenizes texts and batches, views and masks token ids.

    Args:
        tokenizer: A ``tokenizers`` tokenizer; its padding is turned off and truncation set to ``max_length``.
        specials: Its special tokens.
        options: The text options (``max_length``, ``span_deletion``, ``mask_replace_prob``, ``mask_random_prob``).
    """

    def __init__(self, tokenizer: Tokenizer, specials: SpecialTokens, options: TextOptions) -> None:
        self.tokenizer = tokenizer
        self.specials = specials
        self.options = options
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=options.max_length)
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        special = set(specials.special_ids)
        self._special_ids = torch.tensor(sorted(special), dtype=torch.long)
        self._random_ids = torch.tensor([i for i in range(self.vocab_size) if i not in special], dtype=torch.long)

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self.specials.pad_id

    @property
    def mask_id(self) -> int:
        """Id of the MLM mask token."""
        return self.specials.mask_id

    def decode(self, raw: Any) -> str:
        """Turn a raw value (``str``, ``Path`` to a text file, UTF-8 ``bytes``) into text; see ``decode_text``."""
        return decode_text(raw)

    def prepare(self, sample: str) -> list[int]:
        """Token ids of a text, with the tokenizer's special tokens (``[CLS] ... [SEP]``), at most ``max_length``."""
        return self.tokenizer.encode(sample).ids

    def augment(self, sample: str | Sequence[int], rng: np.random.Generator) -> list[int]:
        """A random view: the ids with one contiguous span of non-special tokens deleted.

        The span holds ``round(span_deletion * n)`` of the ``n`` non-special tokens (at least one is kept);
        special tokens (CLS, SEP, ...) are never deleted. With ``span_deletion == 0`` the ids come back unchanged
        and the views differ only by encoder dropout (SimCSE).

        Args:
            sample: A decoded text, or ids from ``prepare``.
            rng: The only source of randomness.
        """
        ids = self.prepare(sample) if isinstance(sample, str) else list(sample)
        special = set(self.specials.special_ids)
        content = [i for i, token in enumerate(ids) if token not in special]
        n = len(content)
        span = min(round(self.options.span_deletion * n), n - 1)
        if span <= 0:
            return ids
        start = int(rng.integers(0, n - span + 1))
        drop = set(content[start : start + span])
        return [token for i, token in enumerate(ids) if i not in drop]

    def collate(self, samples: list[Sequence[int]]) -> ModalityBatch:
        """Pad id lists to the longest one.

        Returns:
            ``ModalityBatch(data={"ids": ids}, padding_mask=padding)``.

        Shapes:
            ids: [B, L] long, ``pad_id`` after each row's end; padding: [B, L] bool, True at padding;
            L is the longest row.
        """
        if not samples:
            raise ValueError("text modality: cannot collate an empty list of samples")
        length = max(len(s) for s in samples)
        ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        padding = torch.ones(len(samples), length, dtype=torch.bool)
        for row, sample in enumerate(samples):
            ids[row, : len(sample)] = torch.as_tensor(list(sample), dtype=torch.long)
            padding[row, : len(sample)] = False
        return ModalityBatch(data={"ids": ids}, padding_mask=padding)

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """BERT-style masked language modelling input.

        Each non-special, non-padding token is chosen with probability ``ratio``; every row with such a token
        gets at least one. Of the chosen tokens, ``mask_replace_prob`` become the mask token,
        ``mask_random_prob`` a random non-special token, and the rest stay unchanged.

        Args:
            batch: A collated batch, on any device.
            ratio: Probability of choosing a token, in (0, 1].
            generator: Random generator on the batch's device (None: the global one).

        Returns:
            ``MaskedInput`` with the corrupted batch (same padding mask), the chosen positions, the original
            ids as targets and ``num_classes = vocab_size``.

        Shapes:
            batch.data["ids"]: [B, L] long; mask: [B, L] bool; target: [B, L] long.
        """
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"text masking ratio must be in (0, 1], got {ratio}")
        ids: Tensor = batch.data["ids"]
        device = ids.device
        padding = batch.padding_mask if batch.padding_mask is not None else ids == self.pad_id
        maskable = ~torch.isin(ids, self._special_ids.to(device)) & ~padding
        noise = torch.rand(ids.shape, generator=generator, device=device)
        chosen = (noise < ratio) & maskable
        # Rows with a maskable token but none chosen get their maskable token of lowest noise.
        empty = ~chosen.any(1) & maskable.any(1)
        if empty.any():
            first = noise.masked_fill(~maskable, 2.0).argmin(1)
            chosen[empty, first[empty]] = True
        kind = torch.rand(ids.shape, generator=generator, device=device)
        replace_prob, random_prob = self.options.mask_replace_prob, self.options.mask_random_prob
        corrupted = ids.masked_fill(chosen & (kind < replace_prob), self.mask_id)
        to_random = chosen & (kind >= replace_prob) & (kind < replace_prob + random_prob)
        if len(self._random_ids):
            pick = torch.randint(len(self._random_ids), ids.shape, generator=generator, device=device)
            corrupted = torch.where(to_random, self._random_ids.to(device)[pick], corrupted)
        data = {**batch.data, "ids": corrupted} if isinstance(batch.data, dict) else {"ids": corrupted}
        masked = ModalityBatch(data=data, padding_mask=batch.padding_mask, keep=batch.keep)
        return MaskedInput(batch=masked, mask=chosen, target=ids, num_classes=self.vocab_size)

    def raw_features(self, samples: Iterable[Sequence[int]]) -> Tensor:
        """The raw-input baseline: a TF-IDF bag of token ids (``mmssl_text.baseline.bag_of_tokens``) fitted on
        ``samples``, leaving out every special token (padding, CLS, SEP, mask, unknown, ...).

        Args:
            samples: Token ids from ``prepare``, read once.

        Shapes:
            -> [N, K] float32 with L2-normalised rows; K <= ``baseline.MAX_TOKENS`` (4096) most frequent ids.
        """
        return bag_of_tokens(samples, ignore=self.specials.special_ids)

    def save(self, directory: Path) -> None:
        """Write ``tokenizer.json`` and ``text_special_tokens.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        (directory / SPECIALS_FILE).write_text(json.dumps(self.specials.to_json(), indent=2), encoding="utf-8")


def _decoded(corpus: Iterable[Any], counter: list[int]) -> Iterator[str]:
    for raw in corpus:
        counter[0] += 1
        yield decode_text(raw)


def build_processor(options: TextOptions, corpus: Iterable[Any] | None = None) -> TextProcessor:
    """Train a WordPiece tokenizer on ``corpus`` (``options.tokenizer is None``) or load ``options.tokenizer``.

    Args:
        options: Text options.
        corpus: Raw training values (decoded with ``decode_text``); unused when a tokenizer is given.

    Raises:
        ValueError: A tokenizer must be trained but the corpus is empty.
        TokenizerError: The given tokenizer cannot be loaded or lacks a pad or mask token.
    """
    if options.tokenizer is not None:
        tokenizer, specials = load_tokenizer(options.tokenizer)
        return TextProcessor(tokenizer, specials, options)
    counter = [0]
    tokenizer = train_tokenizer(
        _decoded(corpus or (), counter), options.vocab_size, options.min_frequency, options.lowercase,
        options.strip_accents,
    )
    if counter[0] == 0:
        raise ValueError("text modality: no training texts to train a tokenizer on (or set options.tokenizer)")
    return TextProcessor(tokenizer, find_special_tokens(tokenizer, origin="trained tokenizer"), options)


def load_processor(options: TextOptions, directory: Path) -> TextProcessor:
    """Rebuild the processor that ``TextProcessor.save`` wrote to ``directory``."""
    directory = Path(directory)
    specials_file = directory / SPECIALS_FILE
    if not specials_file.is_file():  # a plain tokenizer folder: find the special tokens again
        tokenizer, specials = load_tokenizer(directory)
        return TextProcessor(tokenizer, specials, options)
    try:
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    except Exception as err:  # tokenizers raises a bare Exception for missing or malformed files
        raise TokenizerError(f"could not read saved text processor {directory / TOKENIZER_FILE}: {err}") from err
    specials = SpecialTokens.from_json(json.loads(specials_file.read_text(encoding="utf-8")))
    return TextProcessor(tokenizer, specials, options)
