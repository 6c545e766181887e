"""First-party text modality: WordPiece (or any ``tokenizers``) tokenizer, transformer encoder, MLM and SimCSE."""

from __future__ import annotations

from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_text.adopt import adopt
from mmssl_text.encoder import TokenEmbedder, build_encoder
from mmssl_text.options import TextOptions
from mmssl_text.processor import TextProcessor, build_processor, decode_text, load_processor
from mmssl_text.tokenizer import SpecialTokens, TokenizerError, load_tokenizer, train_tokenizer

plugin = ModalityPlugin(
    name="text",
    description="Text: WordPiece/Hugging Face tokenizer, transformer encoder, span-deletion/dropout views, MLM",
    capabilities=Capabilities(views=True, masking="categorical", pairing=True),
    options=TextOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
    adopt=adopt,
)

__all__ = [
    "SpecialTokens",
    "TextOptions",
    "TextProcessor",
    "TokenEmbedder",
    "TokenizerError",
    "build_encoder",
    "build_processor",
    "decode_text",
    "load_processor",
    "load_tokenizer",
    "plugin",
    "train_tokenizer",
]
