"""k-nearest-neighbour classification on frozen embeddings (cosine similarity, weighted vote as in DINO)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import embed_values, labelled_values, raw_features


def knn_predict(bank: Tensor, bank_labels: Tensor, query: Tensor, k: int = 20, temperature: float = 0.07) -> Tensor:
    """Predict the class of each query from its k most cosine-similar bank rows, weighted by exp(sim / T).

    Shapes:
        bank [N, D], bank_labels [N] long, query [M, D] -> [M] long.
    """
    bank, query = F.normalize(bank.float(), dim=-1), F.normalize(query.float(), dim=-1)
    num_classes = int(bank_labels.max()) + 1
    k = min(k, len(bank))
    preds = []
    for lo in range(0, len(query), 1024):
        sim, idx = (query[lo : lo + 1024] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    bank: Tensor, bank_labels: np.ndarray, query: Tensor, query_labels: np.ndarray, k: int, t: float
) -> float:
    pred = knn_predict(bank, torch.as_tensor(bank_labels), query, k, t)
    return float((pred.numpy() == query_labels).mean())


class KNNOptions(EvalOptions):
    modality: str = Field(description="Modality to embed.")
    bank: str = Field("train", description="Labelled split used as neighbours.")
    query: str = Field("test", description="Labelled split to classify.")
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    features: Literal["pooled", "projected"] = "pooled"
    baselines: list[Literal["random_init", "raw"]] = Field(
        default_factory=lambda: ["random_init", "raw"],
        description="Also score a random-init model of the same architecture and/or the raw prepared input.",
    )


@register_evaluator(
    "knn",
    KNNOptions,
    splits=lambda o: [o.bank, o.query],
    modalities=lambda o: [o.modality],
    needs=lambda o: [(o.bank, "labels"), (o.query, "labels")],
)
def run_knn(options: KNNOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``knn_top1`` and, per baseline, ``knn_top1_random_init`` / ``knn_top1_raw``."""
    prefix = options.prefix or "knn"
    column, processor = ctx.columns[options.modality], ctx.processors[options.modality]
    bank_values, bank_labels = labelled_values(ctx.source(options.bank), column)
    query_values, query_labels = labelled_values(ctx.source(options.query), column)

    def score(model) -> float:
        def emb(values):
            return embed_values(
                model, options.modality, processor, values, options.features, options.batch_size, ctx.device
            )

        return knn_accuracy(
            emb(bank_values), bank_labels, emb(query_values), query_labels, options.k, options.temperature
        )

    results = {f"{prefix}_top1": score(ctx.model)}
    if "random_init" in options.baselines:
        results[f"{prefix}_top1_{ctx.baseline_name}"] = score(ctx.random_model)
    if "raw" in options.baselines:
        raw = raw_features(processor, bank_values + query_values)  # one padding shape for both splits
        if raw is not None:
            bank_raw, query_raw = raw[: len(bank_values)], raw[len(bank_values) :]
            results[f"{prefix}_top1_raw"] = knn_accuracy(
                bank_raw, bank_labels, query_raw, query_labels, options.k, options.temperature
            )
    results[f"{prefix}_chance"] = 1.0 / len(np.unique(np.concatenate([bank_labels, query_labels])))
    return results
