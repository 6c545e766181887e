"""The modality plugin contract.

A modality plugin tells the core how to turn raw values (file paths, bytes, arrays, strings) into batches, how
to make random views and masks of them, and how to build an encoder for them. The core never looks at a
modality's name: it only calls the functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

if TYPE_CHECKING:
    from mmssl.encoders.base import Preprocessing

OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass
class ModalityBatch:
    """A collated batch of one modality.

    Attributes:
        data: The plugin's input; a tensor or a dict of tensors (anything with ``.to``) read by its encoder.
        padding_mask: [B, N] bool, True where a token is padding; None when no token is padding.
        keep: [B, K] long indices of the tokens the encoder sees (token-dropping masks); None keeps all.
    """

    data: Any
    padding_mask: Tensor | None = None
    keep: Tensor | None = None

    def to(self, device: torch.device | str) -> ModalityBatch:
        def move(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x.to(device) if hasattr(x, "to") else x

        return ModalityBatch(move(self.data), move(self.padding_mask), move(self.keep))

    def with_keep(self, keep: Tensor | None) -> ModalityBatch:
        return replace(self, keep=keep)

    def __len__(self) -> int:
        data = self.data
        if isinstance(data, dict):
            data = next(iter(data.values()))
        if hasattr(data, "num_graphs"):
            return int(data.num_graphs)
        return len(data)


@dataclass
class MaskedInput:
    """What a plugin's ``mask`` returns for masked-prediction objectives.

    Attributes:
        batch: The batch the encoder sees (visible tokens only via ``keep``, or masked ids replaced).
        mask: [B, N] bool over all N token positions, True where the token is hidden and must be predicted.
        target: [B, N, P] float targets (continuous) or [B, N] long ids (categorical).
        num_classes: For categorical targets, the number of classes (e.g. vocabulary size).
    """

    batch: ModalityBatch
    mask: Tensor
    target: Tensor
    num_classes: int | None = None

    @property
    def kind(self) -> Literal["continuous", "categorical"]:
        return "categorical" if self.num_classes is not None else "continuous"


@dataclass(frozen=True)
class Capabilities:
    """What a modality can offer to objectives.

    Attributes:
        views: ``augment`` makes random views, so two-view objectives (SimCLR, ...) apply.
        masking: ``mask`` hides tokens: "continuous" targets (MAE-style reconstruction), "categorical"
            targets (MLM-style), or None when the modality cannot be masked.
        pairing: Rows can be paired with other modalities (alignment objectives); every encoder gives a
            pooled embedding, so this is True unless a plugin says otherwise.
        masks_drop_tokens: ``mask`` hides tokens by dropping them from the encoder's input (``ModalityBatch.keep``),
            which only encoders that can drop tokens accept; None: True for continuous masking (MAE-style).
            Read it as ``drops_tokens``.
        local_views: The processor has ``augment_local`` (small local crops for DINO's multi-crop); views named
            ``local0``, ``local1``, ... are made with it.
    """

    views: bool = True
    masking: Literal["continuous", "categorical"] | None = None
    pairing: bool = True
    masks_drop_tokens: bool | None = None
    local_views: bool = False

    @property
    def drops_tokens(self) -> bool:
        return self.masking == "continuous" if self.masks_drop_tokens is None else self.masks_drop_tokens

    def describe(self) -> str:
        parts = ["views" if self.views else "no views"]
        if self.local_views:
            parts.append("local views")
        parts.append(f"masking ({self.masking})" if self.masking else "no masking")
        parts.append("pairing" if self.pairing else "no pairing")
        return ", ".join(parts)


@dataclass
class EncoderOutput:
    """What every encoder returns.

    Attributes:
        tokens: [B, N', D] token features in the order of the input tokens (only the kept ones when the
            batch had ``keep``), without any class token.
        pooled: [B, D] one embedding per row.
        padding_mask: [B, N'] bool, True at padding; None when there is none.
    """

    tokens: Tensor
    pooled: Tensor
    padding_mask: Tensor | None = None


class Encoder(Protocol):
    """An ``nn.Module`` mapping a ``ModalityBatch`` to an ``EncoderOutput``; ``width`` is D.

    An encoder whose pooled output is not D wide (e.g. pyramid pooling) also sets ``pooled_width``.
    """

    width: int

    def __call__(self, batch: ModalityBatch) -> EncoderOutput: ...


def pooled_width(encoder: Any) -> int:
    """Width of ``encoder``'s pooled output: its ``pooled_width`` where it has one, else its token width."""
    return int(getattr(encoder, "pooled_width", encoder.width))


@runtime_checkable
class Processor(Protocol):
    """A modality's preprocessing, fitted to a dataset (normalisation statistics, a tokenizer, ...).

    Optional methods, looked up when present: ``augment_local`` (the ``local_views`` capability),
    ``token_grid`` (JEPA block masks) and ``raw_features`` (``SupportsRawFeatures``).
    """

    def decode(self, raw: Any) -> Any:
        """Turn one raw value (path, bytes, array, string) into a sample."""

    def prepare(self, sample: Any) -> Any:
        """The deterministic input for evaluation and for objectives that need no random view."""

    def augment(self, sample: Any, rng: np.random.Generator) -> Any:
        """A random view of a sample (for two-view objectives)."""

    def collate(self, samples: list[Any]) -> ModalityBatch:
        """Batch prepared or augmented samples."""

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """Hide a ``ratio`` of the tokens of a batch already on its device."""

    def save(self, directory: Path) -> None:
        """Write what ``ModalityPlugin.load_processor`` needs to rebuild this processor."""


@runtime_checkable
class SupportsRawFeatures(Protocol):
    """An optional ``Processor`` method: the "raw input" baseline of evaluations (kNN, linear probe).

    Processors whose prepared input is not one float tensor per row (token ids, graphs) define it to give a
    fixed-length vector per row; without it the baseline is the prepared input flattened, or none when that is
    not one float tensor (``mmssl.eval.embed.raw_features``).
    """

    def raw_features(self, samples: Iterable[Any]) -> Tensor:
        """Features of prepared samples (from ``prepare``), read once, in order.

        Anything fitted (a vocabulary, idf weights) is fitted on these samples alone, so rows that are compared
        (an evaluation's train and test rows) come in one call and share one feature space.

        Shapes:
            -> [N, F] float, one row per sample.
        """


@dataclass
class ModalityPlugin(Generic[OptionsT]):
    """A modality, as registered in the ``mmssl.modalities`` entry-point group.

    Attributes:
        name: Registry name (``image``, ``text``, ...).
        description: One line for ``mmssl modalities``.
        capabilities: What objectives this modality supports.
        options: Pydantic model ``OptionsT`` of the modality's recipe options (``modalities.<name>.options``).
        build_processor: ``(options, corpus) -> Processor``; ``corpus`` iterates the raw training values, so
            processors can fit statistics or train a tokenizer.
        load_processor: ``(options, directory) -> Processor`` from what ``Processor.save`` wrote.
        build_encoder: ``(options, processor) -> Encoder`` (an ``nn.Module``).
        adopt: ``(options, Preprocessing) -> options`` set up for a released encoder's inputs (tokenizer, image
            size, mean/std, sample rate, ...); None when the plugin cannot feed released encoders.
    """

    name: str
    description: str
    capabilities: Capabilities
    options: type[OptionsT]
    build_processor: Callable[[OptionsT, Iterable[Any]], Processor]
    load_processor: Callable[[OptionsT, Path], Processor]
    build_encoder: Callable[[OptionsT, Processor], nn.Module]
    adopt: Callable[[OptionsT, Preprocessing], OptionsT] | None = None

    def parse_options(self, raw: dict[str, Any] | None) -> OptionsT:
        return self.options.model_validate(raw or {})


def corpus_of(values: Iterable[Any], limit: int | None = None) -> Iterable[Any]:
    """Yield at most ``limit`` values (None: all)."""
    for i, value in enumerate(values):
        if limit is not None and i >= limit:
            return
        yield value


def check_is_module(encoder: Any, plugin: str) -> nn.Module:
    if not isinstance(encoder, nn.Module):
        raise TypeError(
            f"modality plugin {plugin!r}: build_encoder returned {type(encoder).__name__}, expected nn.Module"
        )
    return encoder
