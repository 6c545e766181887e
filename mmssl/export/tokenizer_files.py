"""A run's trained ``tokenizers`` tokenizer as Hugging Face tokenizer files (``AutoTokenizer.from_pretrained``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

#: The token an export prepends to every sequence when the encoder pools a learned class token: its embedding is
#: that class token, so a library's "first token" pooling reads exactly what mmssl pools.
POOL_TOKEN = "[POOL]"


def _with_pool_token(tokenizer: Tokenizer) -> tuple[Tokenizer, int]:
    """A copy of ``tokenizer`` with ``POOL_TOKEN`` added (a new id) and put first by the post-processor."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.add_special_tokens([POOL_TOKEN])
    pool_id = copy.token_to_id(POOL_TOKEN)
    state = json.loads(copy.to_str())
    post = state.get("post_processor") or {}
    if post.get("type") != "TemplateProcessing":
        raise ValueError(f"the run's tokenizer post-processor {post.get('type')} is not a template; cannot add a token")

    def template(items: list[dict[str, Any]]) -> list[str]:
        parts = [POOL_TOKEN]
        for item in items:
            if "SpecialToken" in item:
                parts.append(item["SpecialToken"]["id"])
            else:
                seq = item["Sequence"]
                parts.append(f"${seq['id']}:{seq['type_id']}")
        return parts

    specials = [(POOL_TOKEN, pool_id)] + [(k, v["ids"][0]) for k, v in post.get("special_tokens", {}).items()]
    copy.post_processor = processors.TemplateProcessing(
        single=template(post["single"]), pair=template(post["pair"]), special_tokens=specials
    )
    return copy, pool_id


def save_tokenizer(
    processor: Any, folder: Path, max_length: int, pool_token: bool, pad_token: str | None = None
) -> int | None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for the processor's tokenizer into ``folder``.

    Args:
        processor: The run's text processor (``tokenizer``: a ``tokenizers.Tokenizer``; ``specials``).
        max_length: Longest sequence the export takes, special tokens included.
        pool_token: Prepend ``POOL_TOKEN`` to every sequence.
        pad_token: The token padding writes (default: the run's padding token).

    Returns:
        The id of ``POOL_TOKEN``, or None.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_str(processor.tokenizer.to_str())
    pool_id = None
    if pool_token:
        tokenizer, pool_id = _with_pool_token(tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    s = processor.specials
    names = {"pad_token": pad_token or s.pad, "mask_token": s.mask, "cls_token": s.cls, "sep_token": s.sep}
    names["unk_token"] = s.unk
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **{k: v for k, v in names.items() if v}
    )
    fast.save_pretrained(str(folder))
    return pool_id
