"""The text encoder: word + learned position embeddings feeding the shared transformer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder
from mmssl_text.options import TextOptions
from mmssl_text.processor import TextProcessor


class TokenEmbedder(nn.Module):
    """Token ids -> word embeddings plus learned absolute position embeddings.

    Args:
        vocab_size: Number of token ids.
        width: Embedding width D.
        max_length: Longest sequence (number of position embeddings).
        pad_id: Padding id; its positions are reported as padding.
        dropout: Dropout on the summed embeddings.
    """

    def __init__(self, vocab_size: int, width: int, max_length: int, pad_id: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_length = max_length
        self.word = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, max_length, width))
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.word.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, data: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Embed a batch's ids.

        Args:
            data: ``{"ids": ids}`` as made by ``TextProcessor.collate``.

        Returns:
            tokens with positions added and the padding mask (``ids == pad_id``).

        Shapes:
            ids: [B, L] long, L <= max_length -> tokens [B, L, D], padding [B, L] bool (True = padding).
        """
        ids: Tensor = data["ids"]
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"text batch has {length} tokens per row, more than max_length {self.max_length}")
        tokens = self.word(ids) + self.position[:, :length]
        return self.dropout(tokens), ids == self.pad_id


def build_encoder(options: TextOptions, processor: TextProcessor) -> TransformerEncoder:
    """The text encoder for a processor's vocabulary; ``width`` is ``options.width``."""
    embedder = TokenEmbedder(processor.vocab_size, options.width, options.max_length, processor.pad_id, options.dropout)
    return TransformerEncoder(
        embedder,
        width=options.width,
        depth=options.depth,
        heads=options.heads,
        mlp_ratio=options.mlp_ratio,
        dropout=options.dropout,
        pool=options.pool,
    )
