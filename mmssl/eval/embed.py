"""Embedding a data split with a trained model, batch by batch, without gradients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmssl.data.dataset import is_missing
from mmssl.data.sources import Source
from mmssl.modality import EncoderOutput, Processor, SupportsRawFeatures
from mmssl.model import JointEmbeddingModel

#: What an evaluation can embed: the pooled output, the shared-space projection, or all tokens of a row.
FEATURES = ("pooled", "projected", "tokens")
Features = Literal["pooled", "projected", "tokens"]
#: The ``features`` option of the evaluations that score frozen embeddings (knn, linear_probe).
FeaturesOption = Annotated[
    Features,
    Field(
        description="pooled (the encoder's pooled output), projected (shared space) or tokens (all tokens of a "
        "row concatenated: an image encoder's feature map, which keeps where things are)."
    ),
]


def check_widths(features: str, widths: list[int]) -> None:
    """Matryoshka ``widths`` take the first w values of one embedding vector, which a token grid is not."""
    if widths and features == "tokens":
        raise ValueError(f"widths {widths} slice the pooled or projected embedding; they do not apply to tokens")


def embed_values(
    model: JointEmbeddingModel,
    modality: str,
    processor: Processor,
    values: list,
    features: str = "pooled",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Embed raw values of one modality.

    Args:
        features: ``pooled`` (the encoder's pooled output), ``projected`` (unit-norm shared-space embedding) or
            ``tokens`` (every token of the row, concatenated in order: the feature map of an image encoder,
            which keeps where things are; needs the same number of tokens in every row and no padding).

    Shapes:
        -> [N, D] (pooled), [N, E] (projected) or [N, T * D] (tokens), float32 on the CPU.

    Raises:
        ValueError: Unknown ``features``, or ``tokens`` of rows with padding or differing token counts.
    """
    return embed_features(model, modality, processor, values, (features,), batch_size, device)[features]


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, back in the mode it had afterwards, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def embed_features(
    model: JointEmbeddingModel,
    modality: str,
    processor: Processor,
    values: list,
    features: tuple[str, ...],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Embed raw values of one modality once and read several ``features`` of each batch (see ``embed_values``):
    a recipe that scores the pooled embedding and the feature map encodes each row once, not twice.

    Shapes: -> {feature: [N, D], [N, E] or [N, T * D]}, float32 on the CPU.
    """
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {unknown[0]!r}")
    out: dict[str, list[Tensor]] = {f: [] for f in features}
    with evaluating(model):
        for lo in range(0, len(values), batch_size):
            batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]])
            encoded = model.encode(modality, batch.to(device))
            for feature, done in out.items():
                if feature == "tokens":
                    emb = _token_grid(encoded, modality, done[0].shape[1] if done else None)
                else:
                    emb = encoded.pooled if feature == "pooled" else model.project(modality, encoded.pooled)
                done.append(emb.float().cpu())
    return {f: torch.cat(done) if done else torch.empty(0, model.embed_dim) for f, done in out.items()}


@torch.no_grad()
def project_embeddings(
    model: JointEmbeddingModel,
    modality: str,
    pooled: Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The shared-space projection of pooled embeddings already computed (``features: projected`` without
    encoding the rows again).

    Shapes: pooled [N, D] -> [N, E] float32 on the CPU.
    """
    with evaluating(model):
        out = [
            model.project(modality, pooled[lo : lo + batch_size].to(device)).float().cpu()
            for lo in range(0, len(pooled), batch_size)
        ]
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


def _token_grid(encoded: EncoderOutput, modality: str, width: int | None) -> Tensor:
    """Tokens [B, T, D] -> [B, T * D], refusing padded rows and a token count that changes between batches."""
    if encoded.padding_mask is not None and bool(encoded.padding_mask.any()):
        raise ValueError(
            f"features: tokens needs rows of one token count, but {modality} rows are padded to different "
            "lengths: use features: pooled"
        )
    grid = encoded.tokens.flatten(1)
    if width is not None and grid.shape[1] != width:
        raise ValueError(
            f"features: tokens needs rows of one token count, but {modality} batches give {width} and "
            f"{grid.shape[1]} values: use features: pooled"
        )
    return grid


def _float_tensor(data: Any) -> Tensor | None:
    """The batch's one floating-point tensor: ``data`` itself or the only float tensor of a dict."""
    if isinstance(data, Tensor):
        return data if data.is_floating_point() else None
    if isinstance(data, dict):
        found = [v for v in data.values() if isinstance(v, Tensor) and v.is_floating_point()]
        return found[0] if len(found) == 1 else None
    return None


def raw_features(processor: Processor, values: list, batch_size: int = 1024) -> Tensor | None:
    """The "raw input" baseline: features of each row without any learning, all rows in one feature space.

    A processor with ``raw_features`` (``SupportsRawFeatures``: e.g. a bag of tokens for text, of node features
    for graphs) gets every prepared row in one call, so what it fits (a vocabulary, idf) is shared by all rows.
    Otherwise it is the prepared input, zero-padded to the largest shape over all rows and flattened: batches of
    ``batch_size`` rows and dict data with one float tensor (e.g. ``{"values": [B, C, L]}``) are padded at the
    end of each dimension to one shape, so channel and time positions line up between rows. None when there are
    no rows, or no ``raw_features`` and the input is not one float tensor per row.

    Raises:
        ValueError: The processor's ``raw_features`` returned something other than one row per value.

    Shapes: -> [N, F] float32 on the CPU.
    """
    if not values:
        return None
    if isinstance(processor, SupportsRawFeatures):
        found = processor.raw_features(processor.prepare(processor.decode(v)) for v in values)
        if not isinstance(found, Tensor) or found.ndim != 2 or len(found) != len(values):
            got = f"shape {list(found.shape)}" if isinstance(found, Tensor) else type(found).__name__
            raise ValueError(
                f"{type(processor).__name__}.raw_features must return an [N, F] tensor for N = {len(values)} "
                f"samples, got {got}"
            )
        return found.float().cpu()
    chunks = []
    for lo in range(0, len(values), batch_size):
        batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]])
        x = _float_tensor(batch.data)
        if x is None:
            return None
        chunks.append(x.float().cpu())
    shape = [max(c.shape[d] for c in chunks) for d in range(1, chunks[0].ndim)]
    padded = []
    for c in chunks:
        pad: list[int] = []
        for d in reversed(range(1, c.ndim)):
            pad += [0, shape[d - 1] - c.shape[d]]
        padded.append(F.pad(c, pad).reshape(len(c), -1))
    return torch.cat(padded)


def labelled_values(source: Source, column: str) -> tuple[list, np.ndarray]:
    """Values of ``column`` in rows that have it and a label >= 0, with their labels."""
    values, labels = [], []
    for row in source.rows:
        value, label = row.get(column), row.get("label")
        if is_missing(value) or label is None or int(label) < 0:
            continue
        values.append(value)
        labels.append(int(label))
    if not values:
        raise ValueError(f"{source.origin}: no labelled rows with column {column!r}")
    return values, np.asarray(labels)
