"""Linear-probe fit time and accuracy in float32 (what ``mmssl.eval.linear_probe`` fits in) against float64.

The probe is scikit-learn's ``LogisticRegression`` (lbfgs, C=1, max_iter=1000) on standardised features. Its
slowest case in the quickstart is the raw-pixel baseline: 60k Fashion-MNIST training images x 784 pixels. This
script fits that probe in both precisions, alternating the order from round to round, and prints the accuracy
on the 10k test images, the lbfgs iterations and the seconds of each fit, then the median time ratio.

    .venv/bin/python benchmarks/probe_precision.py                # ~5 min on 2 cores (float32 120 s, float64 166 s)
    .venv/bin/python benchmarks/probe_precision.py --limit 10000  # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mmssl.datasets.fashion_mnist import FashionMNISTOptions, load_fashion_mnist

#: lbfgs iterations, as the linear-probe evaluation's default.
MAX_ITER = 1000


def pixels(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as [N, 784] floats in [0, 1] and [N] labels."""
    source = load_fashion_mnist(FashionMNISTOptions(split=split, limit=limit), Path.cwd())
    images = np.stack([row["image"] for row in source.rows]).reshape(len(source.rows), -1) / 255.0
    return images, np.array([row["label"] for row in source.rows])


def fit(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, dtype: type) -> dict:
    """One probe fit in ``dtype``: accuracy, lbfgs iterations and seconds (scaling included)."""
    start = time.perf_counter()
    scaler = StandardScaler().fit(train_x.astype(dtype))
    with warnings.catch_warnings():  # reaching max_iter is reported in the table, as "(limit)"
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(max_iter=MAX_ITER).fit(scaler.transform(train_x.astype(dtype)), train_y)
    accuracy = float((probe.predict(scaler.transform(test_x.astype(dtype))) == test_y).mean())
    return {"accuracy": accuracy, "iterations": int(probe.n_iter_[0]), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Training images (default: all 60k).")
    parser.add_argument("--rounds", type=int, default=1, help="Fits per precision, alternating the order.")
    args = parser.parse_args()
    train_x, train_y = pixels("train", args.limit)
    test_x, test_y = pixels("test", None)
    print(
        f"{len(train_x)} train x {train_x.shape[1]} features, {len(test_x)} test; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}"
    )
    precisions = {"float32": np.float32, "float64": np.float64}
    ratios = []
    for round_ in range(args.rounds):
        order = list(precisions) if round_ % 2 == 0 else list(reversed(precisions))
        found = {name: fit(train_x, train_y, test_x, test_y, precisions[name]) for name in order}
        for name in order:
            r = found[name]
            print(
                f"round {round_}  {name}: accuracy {r['accuracy']:.4f}  iterations {r['iterations']:4d}"
                f"{' (limit)' if r['iterations'] >= MAX_ITER else ''}  {r['seconds']:.1f} s"
            )
        ratios.append(found["float64"]["seconds"] / found["float32"]["seconds"])
    print(
        f"SUMMARY float64 / float32 fit time, median of {len(ratios)}: {statistics.median(ratios):.2f}x; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
