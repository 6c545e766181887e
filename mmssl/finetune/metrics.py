"""Test metrics: top-1 and macro F1 for classification, MAE, RMSE and R^2 for regression."""

from __future__ import annotations

from torch import Tensor


def classification_metrics(y_true: Tensor, y_pred: Tensor) -> dict[str, float]:
    """Top-1 accuracy and macro F1 (over the classes present in the true or predicted labels)."""
    from sklearn.metrics import f1_score

    return {
        "top1": float((y_true == y_pred).double().mean()),
        "macro_f1": float(f1_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0)),
    }


def regression_metrics(y_true: Tensor, y_pred: Tensor, train_mean: float) -> dict[str, float]:
    """MAE, RMSE, R^2 (against the test mean) and the RMSE of always predicting the training mean."""
    y, p = y_true.double(), y_pred.double()
    residual = ((y - p) ** 2).sum()
    spread = ((y - y.mean()) ** 2).sum()
    return {
        "mae": float((y - p).abs().mean()),
        "rmse": float(((y - p) ** 2).mean().sqrt()),
        "r2": float(1.0 - residual / spread) if spread > 0 else 0.0,
        "baseline_rmse": float(((y - train_mean) ** 2).mean().sqrt()),
    }
