"""Tests of the linear-probe evaluator (``mmssl/eval/linear_probe.py``)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from mmssl.data.sources import Source
from mmssl.eval import logistic
from mmssl.eval.base import EVALUATORS, EvalContext
from mmssl.eval.embed import raw_features
from mmssl.eval.linear_probe import linear_probe_accuracy
from mmssl.eval.logistic import fit_logistic_regression, logistic_objective
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.model import JointEmbeddingModel


def blobs(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around class centres 4 apart on the axes, with noise std ``spread``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = np.zeros((classes, dim))
    centres[np.arange(classes), np.arange(classes) % dim] = 4.0
    return centres[labels] + spread * rng.standard_normal((n, dim)), labels


def test_separable_data_gives_accuracy_one() -> None:
    train_x, train_y = blobs(60, 5, 3, 0.3, seed=0)
    test_x, test_y = blobs(30, 5, 3, 0.3, seed=1)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == 1.0
    assert linear_probe_accuracy(torch.from_numpy(train_x).float(), train_y, torch.from_numpy(test_x), test_y) == 1.0


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_non_separable_data_matches_sklearn(C: float) -> None:
    train_x, train_y = blobs(200, 6, 4, 3.0, seed=2)
    test_x, test_y = blobs(150, 6, 4, 3.0, seed=3)
    train_x[:, 0] *= 100.0  # scales differ: the probe standardises
    test_x[:, 0] *= 100.0
    ours = linear_probe_accuracy(train_x, train_y, test_x, test_y, C=C)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(train_x, train_y)
    # Both stop at a gradient under 1e-4, ours in float32: a row on the boundary may fall either way.
    assert ours == pytest.approx(reference.score(test_x, test_y), abs=1.5 / len(test_y))
    assert 0.3 < ours < 0.95


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("C", [0.05, 1.0])
@pytest.mark.parametrize("preconditioned", [True, False])
def test_fit_reaches_sklearns_optimum(
    classes: int, C: float, preconditioned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fitted to a tight tolerance in float64, weights and intercept equal scikit-learn's (multinomial for four
    classes, binomial for two), with and without the whitening preconditioner."""
    if not preconditioned:
        monkeypatch.setattr(logistic, "MAX_PRECONDITIONED_FEATURES", 0)
    x, y = blobs(300, 6, classes, 2.0, seed=4)
    x[:, 1] += 0.9 * x[:, 0]  # correlated features
    y = np.array([3, 7, 9, 12])[y]  # any label values
    fit = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), C=C, max_iter=5000, tol=1e-8)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x, y)
    assert fit.converged
    assert fit.weight.dtype == torch.float64 and fit.weight.shape == (6, 1 if classes == 2 else classes)
    scale = float(np.abs(reference.coef_).max())
    np.testing.assert_allclose(fit.weight.T.numpy(), reference.coef_, atol=1e-5 * scale)
    np.testing.assert_allclose(fit.bias.numpy(), reference.intercept_, atol=1e-5 * scale)
    assert np.array_equal(fit.predict(torch.from_numpy(x)).numpy(), reference.predict(x))


def test_objective_is_sklearns_at_its_optimum() -> None:
    """The objective minimised is the mean log loss plus ||W||^2 / (2 C N): its gradient vanishes at sklearn's fit."""
    x, y = blobs(120, 5, 3, 2.0, seed=5)
    reference = LogisticRegression(C=0.5, tol=1e-12, max_iter=100_000).fit(x, y)
    weight = torch.tensor(reference.coef_.T, requires_grad=True)
    bias = torch.tensor(reference.intercept_, requires_grad=True)
    logistic_objective(torch.from_numpy(x), torch.from_numpy(y), weight, bias, C=0.5).backward()
    assert float(weight.grad.abs().max()) < 1e-7 and float(bias.grad.abs().max()) < 1e-7
    with torch.no_grad():
        bias[0] += 0.1  # and moving away raises it: the gradient is not trivially zero
    moved = logistic_objective(torch.from_numpy(x), torch.from_numpy(y), weight, bias, C=0.5)
    at = logistic_objective(torch.from_numpy(x), torch.from_numpy(y), weight, bias - torch.tensor([0.1, 0, 0]), 0.5)
    assert float(moved.detach()) > float(at.detach())


def test_whitening_converges_in_fewer_iterations_on_correlated_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standardised features mixed from directions whose scales span 1 to 1e-3 make plain L-BFGS crawl; in
    whitened coordinates it needs a fraction of the iterations, and lands on the same classifier."""
    rng = np.random.default_rng(6)
    latent = rng.standard_normal((500, 20))
    rotation, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    x = latent @ np.diag(np.logspace(0, -3, 20)) @ rotation
    x = torch.from_numpy((x - x.mean(0)) / x.std(0))
    y = torch.from_numpy((latent @ rng.standard_normal(20) + 0.3 * rng.standard_normal(500) > 0).astype(np.int64))
    # tol 1e-8: the two fits' logits then differ by under 1e-6, far inside the smallest margin (2e-4), so the
    # predictions cannot part on another CPU's rounding
    whitened = fit_logistic_regression(x, y, C=100.0, max_iter=5000, tol=1e-8)
    monkeypatch.setattr(logistic, "MAX_PRECONDITIONED_FEATURES", 0)
    plain = fit_logistic_regression(x, y, C=100.0, max_iter=5000, tol=1e-8)
    assert whitened.converged and plain.converged
    assert whitened.n_iter * 3 < plain.n_iter
    assert torch.equal(whitened.predict(x), plain.predict(x))


def test_fit_does_not_depend_on_where_the_features_are_centred() -> None:
    """Features shifted by 1000 (not standardised) give the same weights, and an intercept shifted to match."""
    x, y = blobs(200, 5, 3, 2.0, seed=7)
    fit = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), tol=1e-8)
    shifted = fit_logistic_regression(torch.from_numpy(x + 1000.0), torch.from_numpy(y), tol=1e-8)
    assert fit.converged and shifted.converged
    torch.testing.assert_close(shifted.weight, fit.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shifted.bias, fit.bias - 1000.0 * fit.weight.sum(0), atol=1e-4, rtol=1e-6)


def test_fit_refuses_one_class_mismatched_rows_and_nan() -> None:
    with pytest.raises(ValueError, match="two classes"):
        fit_logistic_regression(torch.zeros(3, 2), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="3 feature rows but 2 labels"):
        fit_logistic_regression(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1 of 3 feature rows hold NaN or inf"):
        fit_logistic_regression(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), torch.tensor([0, 1, 0]))


def test_iteration_limit_gives_one_short_warning_naming_the_probe() -> None:
    train_x, train_y = blobs(200, 6, 4, 3.0, seed=2)
    test_x, test_y = blobs(150, 6, 4, 3.0, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linear_probe_accuracy(train_x, train_y, test_x, test_y, max_iter=2, name="linear_probe (raw input)")
        linear_probe_accuracy(train_x, train_y, test_x, test_y)  # converges: no warning
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]  # replaced, not repeated
    ours = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(ours) == 1 and ours[0].startswith("linear_probe (raw input): lbfgs stopped at max_iter 2")


def test_single_class_train_split_predicts_it() -> None:
    assert (
        linear_probe_accuracy(np.zeros((3, 2)), np.array([1, 1, 1]), np.zeros((4, 2)), np.array([1, 0, 1, 1])) == 0.75
    )


# ------------------------------------------------------------------------------------------ the evaluator


class VectorProcessor:
    """Rows are 1-D float vectors of varying length; batches are ``{"values": [B, 1, L]}`` padded with zeros."""

    def decode(self, raw: Any) -> Tensor:
        return torch.as_tensor(raw, dtype=torch.float32)

    def prepare(self, sample: Tensor) -> Tensor:
        return sample

    def collate(self, samples: list[Tensor]) -> ModalityBatch:
        length = max(len(s) for s in samples)
        values = torch.zeros(len(samples), 1, length)
        for i, s in enumerate(samples):
            values[i, 0, : len(s)] = s
        return ModalityBatch({"values": values})


class FirstTwo(nn.Module):
    """Embeds a row as its first two values (a fixed, 'trained' feature extractor)."""

    width = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        pooled = batch.data["values"][:, 0, :2] * self.scale
        return EncoderOutput(tokens=pooled[:, None], pooled=pooled)


def test_evaluator_writes_trained_random_init_and_raw_scores() -> None:
    rng = np.random.default_rng(0)

    def split(n: int) -> Source:
        labels = np.arange(n) % 2
        rows = []
        for i, label in enumerate(labels):
            vector = rng.standard_normal(3 + i % 4)  # lengths 3..6: raw features need padding
            vector[0] = 5.0 if label else -5.0  # the class lives in the first value only
            rows.append({"x": vector.tolist(), "label": int(label)})
        rows.append({"x": [1.0, 2.0, 3.0], "label": -1})  # unlabelled rows are skipped
        return Source(rows, ["a", "b"], origin=f"synthetic {n}", columns=["x", "label"])

    sources = {"train": split(40), "test": split(20)}
    model = JointEmbeddingModel({"vec": FirstTwo()}, embed_dim=4)
    random_model = JointEmbeddingModel({"vec": FirstTwo()}, embed_dim=4)
    with torch.no_grad():
        random_model.encoders["vec"].scale.zero_()  # a 'random init' that sees nothing
    ctx = EvalContext(
        model=model,
        processors={"vec": VectorProcessor()},
        columns={"vec": "x"},
        load_split=lambda name: sources[name],
        build_random_model=lambda: random_model,
    )
    kind = EVALUATORS.get("linear_probe")
    options = kind.options.model_validate({"name": "linear_probe", "modality": "vec", "batch_size": 7})
    assert kind.splits(options) == ["train", "test"] and kind.modalities(options) == ["vec"]
    results = kind.run(options, ctx)
    assert results == {
        "linear_probe_top1": 1.0,
        "linear_probe_top1_random_init": 0.5,
        "linear_probe_top1_raw": 1.0,
        "linear_probe_chance": 0.5,
    }
    only = kind.options.model_validate({"name": "linear_probe", "modality": "vec", "baselines": [], "prefix": "lp"})
    assert set(kind.run(only, ctx)) == {"lp_top1", "lp_chance"}


def test_raw_matrix_pads_every_batch_to_one_shape() -> None:
    values = [[1.0], [2.0, 3.0, 4.0], [5.0, 6.0]]
    raw = raw_features(VectorProcessor(), values, batch_size=2)
    assert torch.equal(raw, torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 4.0], [5.0, 6.0, 0.0]]))

    class Ids(VectorProcessor):
        def collate(self, samples: list[Tensor]) -> ModalityBatch:
            return ModalityBatch({"ids": torch.zeros(len(samples), 3, dtype=torch.long)})

    assert raw_features(Ids(), values) is None  # token ids are no raw baseline
