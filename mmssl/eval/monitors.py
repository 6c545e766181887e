"""Label-free health monitors of embeddings: effective rank, alignment, uniformity and collapse warnings.

* :func:`rankme` -- RankMe (Garrido et al. 2023), the exponential of the entropy of the normalised singular
  values: about ``min(n, d)`` for well-spread embeddings, about 1 when they all point one way.
* :func:`alignment` and :func:`uniformity` -- Wang & Isola (2020): mean ``||x - y||^alpha`` of positive pairs
  (lower is better aligned) and ``log mean exp(-t ||x_i - x_j||^2)`` over all pairs (lower is more uniform;
  its minimum for points on the unit sphere is about ``-t`` times the mean squared distance, ``-4`` for t = 2).
* :func:`normalized_std` -- the mean over dimensions of the per-dimension std of L2-normalised embeddings
  (SimSiam's collapse check): ``1/sqrt(d)`` for embeddings spread over the sphere, 0 for a collapsed one.
* :func:`collapse_warnings` -- readable warnings when those numbers say "collapsed".

:class:`TrainingMonitor` computes them during training (``train.monitor_every``) on a fixed held batch: the
first ``train.monitor_rows`` rows of the training split, clean view, embedded with each modality's encoder in
eval mode, without gradients and without touching the global RNG (so exact resume is unaffected).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.data.dataset import is_missing
from mmssl.eval.embed import evaluating
from mmssl.modality import ModalityBatch, Processor

#: RankMe below this share of ``min(n, d)`` is reported as dimensional collapse ...
RANKME_FRACTION = 0.01
#: ... and RankMe below this absolute value always is (all embeddings along about one direction).
RANKME_FLOOR = 1.5
#: ``normalized_std * sqrt(d)`` below this is reported as collapse (the embeddings are nearly one point).
STD_FRACTION = 0.1


def rankme(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe effective rank: ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps``.

    ``sigma`` are the singular values of the (uncentred) embedding matrix, as in Garrido et al. (2023).

    Shapes:
        embeddings: ``[n, d]`` -> ``[]`` (float64), between about 1 and ``min(n, d)``.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"rankme needs a non-empty [n, d] matrix, got {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    total = sigma.sum()
    if total <= 0:
        return torch.tensor(1.0, dtype=torch.float64)
    p = sigma / total + eps
    return torch.exp(-(p * p.log()).sum())


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Wang & Isola alignment: ``mean_i ||x_i - y_i||_2^alpha`` of the L2-normalised rows (0 .. 2^alpha).

    Shapes:
        x, y: ``[n, d]`` (row i of x and of y are a positive pair) -> ``[]``.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"x and y must both be [n, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola uniformity: ``log mean_{i<j} exp(-t ||x_i - x_j||_2^2)`` of the L2-normalised rows.

    0 when all rows coincide (collapse); negative, down to about ``-t * 2 n / (n - 1)``, when spread out.

    Shapes:
        x: ``[n, d]`` with n >= 2 -> ``[]``.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"uniformity needs [n, d] with n >= 2, got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1)
    sq = torch.pdist(x, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def normalized_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the std (over rows) of the L2-normalised embeddings.

    About ``1/sqrt(d)`` when the embeddings are spread over the sphere, 0 when they collapse to one point.

    Shapes:
        x: ``[n, d]`` with n >= 2 -> ``[]``.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"normalized_std needs [n, d] with n >= 2, got {tuple(x.shape)}")
    return F.normalize(x.float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def embedding_metrics(x: Tensor) -> dict[str, float]:
    """``rankme``, ``uniformity``, ``std`` (see :func:`normalized_std`), ``rows`` and ``dim`` of embeddings.

    Shapes:
        x: ``[n, d]`` with n >= 2.
    """
    x = x.detach().float()
    return {
        "rankme": float(rankme(x)),
        "uniformity": float(uniformity(x)),
        "std": float(normalized_std(x)),
        "rows": float(x.shape[0]),
        "dim": float(x.shape[1]),
    }


def collapse_warnings(metrics: dict[str, float], dim: int) -> list[str]:
    """Warnings for embeddings whose metrics indicate collapse; empty when they look healthy.

    Thresholds:
        * complete collapse: ``std < STD_FRACTION / sqrt(d)`` (0.1 of the value for embeddings spread over the
          sphere): the embeddings are nearly one point;
        * dimensional collapse: ``rankme < max(RANKME_FLOOR, RANKME_FRACTION * min(n, d))`` (1.5, or 1% of the
          largest possible rank): the embeddings span about one direction.

    Args:
        metrics: From :func:`embedding_metrics` (``rankme`` and/or ``std``; ``rows`` for n, else n = d).
        dim: Embedding width d.
    """
    out = []
    std_floor = STD_FRACTION / math.sqrt(dim)
    if "std" in metrics and metrics["std"] < std_floor:
        out.append(
            f"embeddings collapsed: per-dimension std of the normalised embeddings {metrics['std']:.2e} is below "
            f"{STD_FRACTION} / sqrt(d) = {std_floor:.2e} (spread-out embeddings have about 1/sqrt(d) = "
            f"{1 / math.sqrt(dim):.2e})"
        )
    n = int(metrics.get("rows", dim))
    rank_floor = max(RANKME_FLOOR, RANKME_FRACTION * min(n, dim))
    if "rankme" in metrics and metrics["rankme"] < rank_floor:
        out.append(
            f"dimensional collapse: RankMe {metrics['rankme']:.2f} is below {rank_floor:.2f} "
            f"(max({RANKME_FLOOR}, {RANKME_FRACTION} * min(n={n}, d={dim})))"
        )
    return out


class TrainingMonitor:
    """Embeds a fixed held batch with each modality's encoder and reports the metrics above.

    Args:
        processors: modality -> processor.
        columns: modality -> data column.
        rows: The training split's rows; the first ``num_rows`` are held.
        num_rows: How many rows to hold (each modality uses those of them that have it).
        views: modality -> whether the plugin makes random views; for those, two fixed random views of the
            held rows (drawn once, from their own generator) give ``alignment``.
        seed: Seed of those views.
        batch_size: Rows per encoder call.
    """

    def __init__(
        self,
        processors: dict[str, Processor],
        columns: dict[str, str],
        rows: Any,
        num_rows: int,
        views: dict[str, bool] | None = None,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        self.batch_size = batch_size
        held = [rows[i] for i in range(min(num_rows, len(rows)))]
        self.index: dict[str, list[int]] = {}
        self.batches: dict[str, dict[str, list[ModalityBatch]]] = {}
        for modality, processor in processors.items():
            index = [i for i, row in enumerate(held) if not is_missing(row.get(columns[modality]))]
            if len(index) < 2:
                continue
            samples = [processor.decode(held[i][columns[modality]]) for i in index]
            made = {"clean": [processor.prepare(s) for s in samples]}
            if (views or {}).get(modality, False):
                for v in ("view0", "view1"):
                    made[v] = [
                        processor.augment(s, np.random.default_rng([seed, 1 + (v == "view1"), i]))
                        for s, i in zip(samples, index, strict=True)
                    ]
            self.index[modality] = index
            self.batches[modality] = {
                name: [processor.collate(vals[lo : lo + batch_size]) for lo in range(0, len(vals), batch_size)]
                for name, vals in made.items()
            }

    @torch.no_grad()
    def _pooled(self, model: Any, modality: str, view: str, device: torch.device | str) -> Tensor:
        return torch.cat([model.encode(modality, b.to(device)).pooled.float() for b in self.batches[modality][view]])

    @torch.no_grad()
    def measure(self, model: Any, device: torch.device | str = "cpu") -> tuple[dict[str, float], list[str]]:
        """Metrics ``monitor/<modality>/<name>`` and warning lines for the model's current weights.

        Runs the encoders in eval mode (restoring the previous mode after) under a forked RNG, so the
        training run's random streams are untouched.
        """
        device = torch.device(device)
        metrics: dict[str, float] = {}
        warnings: list[str] = []
        clean: dict[str, Tensor] = {}
        with evaluating(model):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for modality, batches in self.batches.items():
                    emb = clean[modality] = self._pooled(model, modality, "clean", device)
                    found = embedding_metrics(emb)
                    dim = int(found.pop("dim"))
                    found.pop("rows")
                    lines = collapse_warnings({**found, "rows": emb.shape[0]}, dim)
                    if "view0" in batches:
                        found["alignment"] = float(
                            alignment(
                                self._pooled(model, modality, "view0", device),
                                self._pooled(model, modality, "view1", device),
                            )
                        )
                    found["collapse"] = 1.0 if lines else 0.0
                    metrics.update({f"monitor/{modality}/{k}": v for k, v in found.items()})
                    warnings += [f"{modality}: {line}" for line in lines]
                names = sorted(clean)
                for i, a in enumerate(names):
                    for b in names[i + 1 :]:
                        common = sorted(set(self.index[a]) & set(self.index[b]))
                        if len(common) < 2:
                            continue
                        pos_a = {r: k for k, r in enumerate(self.index[a])}
                        pos_b = {r: k for k, r in enumerate(self.index[b])}
                        xa = model.project(a, clean[a][[pos_a[r] for r in common]].to(device))
                        xb = model.project(b, clean[b][[pos_b[r] for r in common]].to(device))
                        metrics[f"monitor/{a}+{b}/alignment"] = float(alignment(xa, xb))
        return metrics, warnings

    def __call__(
        self, model: Any, step: int, device: torch.device | str = "cpu", echo: Callable[[str], Any] = print
    ) -> dict[str, float]:
        """Measure, print each warning line with the step, and return the metrics."""
        metrics, warnings = self.measure(model, device)
        for line in warnings:
            echo(f"WARNING step {step}: {line}")
        return metrics
