"""Linear probe: logistic regression on frozen, standardised embeddings (the standard SSL linear evaluation).

The encoder is not trained: every row of the ``train`` split is embedded once, a scikit-learn
``LogisticRegression`` (L2, lbfgs) is fitted on the standardised embeddings, and its top-1 accuracy on the
``test`` split is reported, next to the same probe on a random-init model and on the raw prepared input.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import embed_values, labelled_values
from mmssl.modality import Processor


def linear_probe_accuracy(
    train_x: Tensor | np.ndarray,
    train_y: np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Fit ``StandardScaler`` + ``LogisticRegression(C=C, max_iter=max_iter)`` on train, return test accuracy.

    The scaler is fitted on the train rows only. A train split with one class predicts that class.

    Shapes:
        train_x [N, D], train_y [N], test_x [M, D], test_y [M].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = _numpy(train_x), _numpy(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        return float((test_y == train_y[0]).mean())
    scaler = StandardScaler().fit(train_x)
    classifier = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(train_x), train_y)
    return float((classifier.predict(scaler.transform(test_x)) == test_y).mean())


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def _float_tensor(data: Any) -> Tensor | None:
    """The batch's one floating-point tensor: ``data`` itself or the only float tensor of a dict."""
    if isinstance(data, Tensor):
        return data if data.is_floating_point() else None
    if isinstance(data, dict):
        found = [v for v in data.values() if isinstance(v, Tensor) and v.is_floating_point()]
        return found[0] if len(found) == 1 else None
    return None


def raw_matrix(processor: Processor, values: list, batch_size: int = 1024) -> Tensor | None:
    """The prepared input, zero-padded to the largest shape over all rows and flattened, as a baseline.

    Unlike ``mmssl.eval.embed.raw_features`` this accepts padded batches and dict data with one float tensor
    (e.g. ``{"values": [B, C, L]}``), padding every batch at the end of each dimension to the same shape, so
    channel and time positions line up between rows. None when the input is not one float tensor per row.

    Shapes: -> [N, F].
    """
    chunks = []
    for lo in range(0, len(values), batch_size):
        batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]])
        x = _float_tensor(batch.data)
        if x is None:
            return None
        chunks.append(x.float().cpu())
    if not chunks:
        return None
    shape = [max(c.shape[d] for c in chunks) for d in range(1, chunks[0].ndim)]
    padded = []
    for c in chunks:
        pad: list[int] = []
        for d in reversed(range(1, c.ndim)):
            pad += [0, shape[d - 1] - c.shape[d]]
        padded.append(F.pad(c, pad).reshape(len(c), -1))
    return torch.cat(padded)


class LinearProbeOptions(EvalOptions):
    modality: str = Field(description="Modality to embed.")
    train: str = Field("train", description="Labelled split the classifier is fitted on.")
    test: str = Field("test", description="Labelled split the accuracy is measured on.")
    C: float = Field(1.0, gt=0, description="Inverse L2 regularisation strength of the logistic regression.")
    max_iter: int = Field(1000, ge=1, description="Iterations of the lbfgs solver.")
    features: Literal["pooled", "projected"] = Field(
        "pooled", description="The encoder's pooled output or the unit-norm shared-space embedding."
    )
    baselines: list[Literal["random_init", "raw"]] = Field(
        default_factory=lambda: ["random_init", "raw"],
        description="Also probe a random-init model of the same architecture and/or the raw prepared input.",
    )


@register_evaluator(
    "linear_probe", LinearProbeOptions, splits=lambda o: [o.train, o.test], modalities=lambda o: [o.modality]
)
def run_linear_probe(options: LinearProbeOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``linear_probe_top1``, per baseline ``linear_probe_top1_random_init`` / ``linear_probe_top1_raw``,
    and ``linear_probe_chance`` (1 / number of classes)."""
    prefix = options.prefix or "linear_probe"
    column, processor = ctx.columns[options.modality], ctx.processors[options.modality]
    train_values, train_labels = labelled_values(ctx.source(options.train), column)
    test_values, test_labels = labelled_values(ctx.source(options.test), column)

    def probe(train_x: Tensor, test_x: Tensor) -> float:
        return linear_probe_accuracy(train_x, train_labels, test_x, test_labels, options.C, options.max_iter)

    def score(model: Any) -> float:
        def emb(values: list) -> Tensor:
            return embed_values(
                model, options.modality, processor, values, options.features, options.batch_size, ctx.device
            )

        return probe(emb(train_values), emb(test_values))

    results = {f"{prefix}_top1": score(ctx.model)}
    if "random_init" in options.baselines:
        results[f"{prefix}_top1_random_init"] = score(ctx.random_model)
    if "raw" in options.baselines:
        raw = raw_matrix(processor, train_values + test_values)
        if raw is not None:
            results[f"{prefix}_top1_raw"] = probe(raw[: len(train_values)], raw[len(train_values) :])
    results[f"{prefix}_chance"] = 1.0 / len(np.unique(np.concatenate([train_labels, test_labels])))
    return results
