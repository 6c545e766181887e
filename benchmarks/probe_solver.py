"""The linear probe's solver (``mmssl.eval.logistic``) against scikit-learn's lbfgs, which the probe used before.

Both minimise the same objective (scikit-learn's ``LogisticRegression(C=1)``: mean log loss plus
``||W||^2 / (2 N)``) on the same standardised float32 features, with the same stopping rule (largest gradient
entry under 1e-4) and ``max_iter`` 1000. The slowest probe of the quickstart is its raw-pixel baseline: 60k
Fashion-MNIST training images x 784 pixels, where scikit-learn stops at 1000 iterations short of converging. The
script fits it both ways, alternating the order from round to round, and prints for each fit the test accuracy,
the iterations, the objective reached (lower is closer to the optimum) and the seconds, then the median time
ratio. ``--embeddings DIR`` also fits the pooled embeddings of a run (``mmssl embed RUN --split train/test -o
DIR/train.safetensors / DIR/test.safetensors``).

    .venv/bin/python benchmarks/probe_solver.py                # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/probe_solver.py --limit 10000  # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from mmssl.datasets.fashion_mnist import FashionMNISTOptions, load_fashion_mnist
from mmssl.eval.linear_probe import standardised
from mmssl.eval.logistic import fit_logistic_regression, logistic_objective

#: L-BFGS iterations at most, as the linear-probe evaluation's default.
MAX_ITER = 1000


def pixels(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as [N, 784] floats in [0, 1] and [N] labels."""
    source = load_fashion_mnist(FashionMNISTOptions(split=split, limit=limit), Path.cwd())
    images = np.stack([row["image"] for row in source.rows]).reshape(len(source.rows), -1) / 255.0
    return images.astype(np.float32), np.array([row["label"] for row in source.rows])


def fit(solver: str, x: torch.Tensor, y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray) -> dict:
    """One fit: accuracy, iterations, objective reached and seconds."""
    start = time.perf_counter()
    if solver == "sklearn":
        with warnings.catch_warnings():  # reaching max_iter is reported in the table, as "(limit)"
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe = LogisticRegression(max_iter=MAX_ITER).fit(x.numpy(), y)
        seconds = time.perf_counter() - start
        weight, bias = torch.from_numpy(probe.coef_.T.astype(np.float32)), torch.from_numpy(probe.intercept_)
        predicted, iterations = probe.predict(test_x.numpy()), int(probe.n_iter_[0])
    else:
        result = fit_logistic_regression(x, torch.from_numpy(y), max_iter=MAX_ITER)
        seconds = time.perf_counter() - start
        weight, bias = result.weight, result.bias
        predicted, iterations = result.predict(test_x).numpy(), result.n_iter
    objective = float(logistic_objective(x.double(), torch.from_numpy(y).long(), weight.double(), bias.double(), 1.0))
    accuracy = float((predicted == test_y).mean())
    return {"accuracy": accuracy, "iterations": iterations, "objective": objective, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Training images (default: all 60k).")
    parser.add_argument("--rounds", type=int, default=1, help="Fits per solver, alternating the order.")
    parser.add_argument("--embeddings", type=Path, default=None, help="Folder with train/test.safetensors.")
    args = parser.parse_args()
    train_x, train_y = pixels("train", args.limit)
    test_x, test_y = pixels("test", None)
    problems = {"raw pixels": (train_x, train_y, test_x, test_y)}
    if args.embeddings:
        train, test = (load_file(args.embeddings / f"{split}.safetensors") for split in ("train", "test"))
        problems["embeddings"] = (train["embeddings"], train["labels"], test["embeddings"], test["labels"])
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}")
    ratios = []
    for name, (a, b, c, d) in problems.items():
        x, test = standardised(a, c)
        print(f"{name}: {len(x)} train x {x.shape[1]} features, {len(test)} test")
        for round_ in range(args.rounds):
            order = ["sklearn", "mmssl"] if round_ % 2 == 0 else ["mmssl", "sklearn"]
            found = {solver: fit(solver, x, b, test, d) for solver in order}
            for solver in order:
                r = found[solver]
                print(
                    f"  round {round_}  {solver:7s}: accuracy {r['accuracy']:.4f}  iterations {r['iterations']:4d}"
                    f"{' (limit)' if r['iterations'] >= MAX_ITER else ''}  objective {r['objective']:.6f}  "
                    f"{r['seconds']:.1f} s"
                )
            ratios.append(found["sklearn"]["seconds"] / found["mmssl"]["seconds"])
    print(
        f"SUMMARY scikit-learn / mmssl fit time, median of {len(ratios)}: {statistics.median(ratios):.1f}x; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
