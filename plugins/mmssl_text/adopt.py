"""Feeding a released text encoder: use its tokenizer and respect its position limit."""

from __future__ import annotations

from typing import Any

from mmssl_text.options import TextOptions


def adopt(options: TextOptions, preprocessing: Any) -> TextOptions:
    """Options that tokenize as the released encoder expects (``mmssl.encoders.base.Preprocessing``).

    Raises:
        ValueError: The encoder does not read token ids, or the recipe names a different tokenizer.
    """
    if preprocessing.input != "tokens":
        raise ValueError(f"the text plugin feeds token ids, but this encoder reads {preprocessing.input}")
    if options.tokenizer is not None and options.tokenizer != preprocessing.tokenizer:
        raise ValueError(
            f"options.tokenizer is {options.tokenizer!r}, but a released encoder brings its own tokenizer; "
            "remove options.tokenizer"
        )
    limit = preprocessing.max_length or options.max_length
    return options.model_copy(
        update={"tokenizer": preprocessing.tokenizer, "max_length": min(options.max_length, limit)}
    )
