"""Recipe options of the text modality (``modalities.text.options``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextOptions(BaseModel):
    """Options of the text modality: tokenizer, transformer encoder, views and MLM masking."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str | None = Field(
        None,
        description=(
            "A Hugging Face tokenizer folder containing tokenizer.json, or a path to a tokenizer.json file; "
            "None trains a WordPiece tokenizer on the recipe's training corpus."
        ),
    )
    vocab_size: int = Field(8000, ge=8, description="Vocabulary size of a trained tokenizer (special tokens included).")
    min_frequency: int = Field(1, ge=1, description="Minimum count of a merge for a trained tokenizer to keep it.")
    lowercase: bool = Field(True, description="A trained tokenizer lower-cases texts before splitting.")
    strip_accents: bool = Field(
        False,
        description="A trained tokenizer also strips accents (NFD, combining marks removed: 'año' becomes 'ano', "
        "as in English BERT). Off by default: it merges distinct words in many languages.",
    )
    max_length: int = Field(
        64, ge=2, description="Texts are truncated to this many tokens, special ones included; size of the positions."
    )
    width: int = Field(256, ge=1, description="Token width D of the transformer encoder.")
    depth: int = Field(4, ge=1, description="Number of transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of each block's MLP relative to width.")
    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout in the encoder; makes two SimCSE views of the same text differ."
    )
    pool: Literal["cls", "mean"] = Field(
        "cls", description="Pooled embedding: a learned class token (cls) or the mean of non-padding tokens (mean)."
    )
    span_deletion: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the non-special tokens removed as one contiguous span by augment; "
            "0 gives SimCSE dropout-only views."
        ),
    )
    mask_replace_prob: float = Field(
        0.8, ge=0.0, le=1.0, description="MLM: share of the chosen tokens replaced by the mask token."
    )
    mask_random_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="MLM: share of the chosen tokens replaced by a random non-special token."
    )

    @model_validator(mode="after")
    def _check(self) -> TextOptions:
        if self.mask_replace_prob + self.mask_random_prob > 1.0:
            raise ValueError(
                f"mask_replace_prob + mask_random_prob must be at most 1, got "
                f"{self.mask_replace_prob} + {self.mask_random_prob}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self
