"""Linear probe: logistic regression on frozen, standardised embeddings (the standard SSL linear evaluation).

The encoder is not trained: every row of the ``train`` split is embedded once, an L2 logistic regression
(scikit-learn's ``LogisticRegression`` objective, fitted by ``mmssl.eval.logistic``) is fitted on the embeddings
standardised with the train split's mean and standard deviation, and its top-1 accuracy on the ``test`` split is
reported, next to the same probe on a random-init model and on the raw prepared input. The fit runs in float32,
the embeddings' own precision.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import FeaturesOption, check_widths
from mmssl.eval.logistic import DEFAULT_TOL, fit_logistic_regression


def linear_probe_accuracy(
    train_x: Tensor | np.ndarray,
    train_y: np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
    name: str = "linear probe",
) -> float:
    """Standardise on train, fit the L2 logistic regression (``C``, ``max_iter``) and return the test accuracy.

    Standardising is ``standardised``. A train split with one class predicts that class. When L-BFGS stops before
    converging (at ``max_iter``, or where its line search finds no lower point), one short ``RuntimeWarning``
    names the probe (``name``); the accuracy is the last iterate's.

    Shapes:
        train_x [N, D], train_y [N], test_x [M, D], test_y [M].
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        return float((test_y == train_y[0]).mean())
    train_x, test_x = standardised(train_x, test_x)
    fit = fit_logistic_regression(train_x, torch.as_tensor(train_y), C, max_iter)
    if not fit.converged:
        why = (
            f"lbfgs stopped at max_iter {max_iter} before converging"
            if fit.n_iter >= max_iter
            else f"lbfgs stopped after {fit.n_iter} of max_iter {max_iter} iterations, finding no lower point"
        )
        warnings.warn(
            f"{name}: {why} (largest gradient entry {fit.gradient:.1e}, tolerance {DEFAULT_TOL:g}); the accuracy is "
            "its last iterate's (raise the evaluation's max_iter to fit longer)",
            RuntimeWarning,
            stacklevel=2,
        )
    return float((fit.predict(test_x).numpy() == test_y).mean())


def standardised(train_x: Tensor | np.ndarray, test_x: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Both splits in float32, standardised with the train rows' mean and population standard deviation, a
    constant feature divided by 1 (scikit-learn's ``StandardScaler``).

    Shapes:
        train_x [N, D], test_x [M, D] -> the same.
    """
    train_x, test_x = _float32(train_x), _float32(test_x)
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
    std[std == 0] = 1.0
    return (train_x - mean) / std, (test_x - mean) / std


def _float32(x: Tensor | np.ndarray) -> Tensor:
    return x.detach().cpu().float() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))


class LinearProbeOptions(EvalOptions):
    modality: str = Field(description="Modality to embed.")
    train: str = Field("train", description="Labelled split the classifier is fitted on.")
    test: str = Field("test", description="Labelled split the accuracy is measured on.")
    C: float = Field(1.0, gt=0, description="Inverse L2 regularisation strength of the logistic regression.")
    max_iter: int = Field(1000, ge=1, description="Iterations of the L-BFGS solver at most.")
    features: FeaturesOption = "pooled"
    widths: list[int] = Field(
        default_factory=list,
        description="Also probe the first w features for each w (Matryoshka widths): writes linear_probe_top1@w.",
    )
    baselines: list[Literal["random_init", "raw"]] = Field(
        default_factory=lambda: ["random_init", "raw"],
        description="Also probe a random-init model of the same architecture and/or the raw prepared input.",
    )

    @model_validator(mode="after")
    def _widths_of_vectors(self) -> LinearProbeOptions:
        check_widths(self.features, self.widths)
        return self


@register_evaluator(
    "linear_probe",
    LinearProbeOptions,
    needs=lambda o: [(o.train, "labels"), (o.test, "labels")],
    reads=lambda o: [(o.modality, split, o.features) for split in (o.train, o.test)],
)
def run_linear_probe(options: LinearProbeOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``linear_probe_top1``, per baseline ``linear_probe_top1_random_init`` / ``linear_probe_top1_raw``,
    and ``linear_probe_chance`` (1 / number of classes)."""
    prefix = options.prefix or "linear_probe"
    m = options.modality
    _, train_labels = ctx.labelled(m, options.train)
    _, test_labels = ctx.labelled(m, options.test)

    def probe(train_x: Tensor, test_x: Tensor, what: str) -> float:
        name = f"{prefix} ({what})"
        return linear_probe_accuracy(train_x, train_labels, test_x, test_labels, options.C, options.max_iter, name)

    def score(model: Any, what: str, width: int | None = None) -> float:
        def emb(split: str) -> Tensor:
            return ctx.embeddings(model, m, split, options.features, options.batch_size)[:, :width]

        return probe(emb(options.train), emb(options.test), what if width is None else f"{what}, width {width}")

    results = {f"{prefix}_top1": score(ctx.model, "trained")}
    for width in options.widths:
        results[f"{prefix}_top1@{width}"] = score(ctx.model, "trained", width)
    if "random_init" in options.baselines:
        results[f"{prefix}_top1_{ctx.baseline_name}"] = score(ctx.random_model, ctx.baseline_name)
    if "raw" in options.baselines:
        raw = ctx.raw(m, (options.train, options.test))
        if raw is not None:
            results[f"{prefix}_top1_raw"] = probe(raw[0], raw[1], "raw input")
    results[f"{prefix}_chance"] = 1.0 / len(np.unique(np.concatenate([train_labels, test_labels])))
    return results
