"""k-nearest-neighbour classification on frozen embeddings (cosine similarity, weighted vote as in DINO)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import FeaturesOption, check_widths


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
    features: FeaturesOption = "pooled"
    widths: list[int] = Field(
        default_factory=list,
        description="Also score the first w features for each w (Matryoshka widths): writes knn_top1@w.",
    )
    baselines: list[Literal["random_init", "raw"]] = Field(
        default_factory=lambda: ["random_init", "raw"],
        description="Also score a random-init model of the same architecture and/or the raw prepared input.",
    )

    @model_validator(mode="after")
    def _widths_of_vectors(self) -> KNNOptions:
        check_widths(self.features, self.widths)
        return self


@register_evaluator(
    "knn",
    KNNOptions,
    needs=lambda o: [(o.bank, "labels"), (o.query, "labels")],
    reads=lambda o: [(o.modality, split, o.features) for split in (o.bank, o.query)],
)
def run_knn(options: KNNOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``knn_top1`` and, per baseline, ``knn_top1_random_init`` / ``knn_top1_raw``."""
    prefix = options.prefix or "knn"
    m = options.modality
    _, bank_labels = ctx.labelled(m, options.bank)
    _, query_labels = ctx.labelled(m, options.query)

    def score(model, width: int | None = None) -> float:
        def emb(split: str) -> Tensor:
            return ctx.embeddings(model, m, split, options.features, options.batch_size)[:, :width]

        return knn_accuracy(
            emb(options.bank), bank_labels, emb(options.query), query_labels, options.k, options.temperature
        )

    results = {f"{prefix}_top1": score(ctx.model)}
    for width in options.widths:
        results[f"{prefix}_top1@{width}"] = score(ctx.model, width)
    if "random_init" in options.baselines:
        results[f"{prefix}_top1_{ctx.baseline_name}"] = score(ctx.random_model)
    if "raw" in options.baselines:
        raw = ctx.raw(m, (options.bank, options.query))  # one padding shape for both splits
        if raw is not None:
            results[f"{prefix}_top1_raw"] = knn_accuracy(
                raw[0], bank_labels, raw[1], query_labels, options.k, options.temperature
            )
    results[f"{prefix}_chance"] = 1.0 / len(np.unique(np.concatenate([bank_labels, query_labels])))
    return results
