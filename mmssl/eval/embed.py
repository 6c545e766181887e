"""Embedding a data split with a trained model, batch by batch, without gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mmssl.data.dataset import is_missing
from mmssl.data.sources import Source
from mmssl.modality import Processor
from mmssl.model import JointEmbeddingModel


@torch.no_grad()
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
        features: ``pooled`` (the encoder's pooled output) or ``projected`` (unit-norm shared-space embedding).

    Shapes:
        -> [N, D] (pooled) or [N, E] (projected), float32 on the CPU.
    """
    if features not in ("pooled", "projected"):
        raise ValueError(f"features must be 'pooled' or 'projected', got {features!r}")
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, len(values), batch_size):
        batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]])
        encoded = model.encode(modality, batch.to(device))
        emb = encoded.pooled if features == "pooled" else model.project(modality, encoded.pooled)
        out.append(emb.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


def raw_features(processor: Processor, values: list, batch_size: int = 1024) -> Tensor | None:
    """The prepared input itself, flattened, as a baseline. None when the input is not one tensor per row.

    Shapes: -> [N, F].
    """
    out = []
    for lo in range(0, len(values), batch_size):
        batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]])
        if not isinstance(batch.data, Tensor) or batch.padding_mask is not None:
            return None
        out.append(batch.data.reshape(len(batch.data), -1).float())
    return torch.cat(out)


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
