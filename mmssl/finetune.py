"""Supervised fine-tuning and linear probing of one encoder on a labelled manifest (``mmssl finetune``).

The encoder comes from an mmssl run folder (its trained weights and fitted processor) or from a recipe file
(a released encoder named in ``modalities.<m>.encoder``, or a fresh random init of the plugin's own encoder,
with the processor fitted on the training manifest). Two modes:

* ``probe``: the encoder is frozen; every row is embedded once (the encoder's pooled output) and a linear head
  on standardised features is trained with AdamW (cross-entropy, or MSE on standardised targets).
* ``full``: encoder and head train end to end on the processor's ``prepare`` inputs (or ``augment`` views), the
  encoder at a lower learning rate, optionally with layer-wise decay.

The epoch is picked on a validation split held out of the training manifest; the test manifest is scored once,
with the weights of that epoch, and the metrics go to ``eval.json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.data.dataset import is_missing
from mmssl.data.sources import ManifestOptions, load_manifest
from mmssl.modality import Processor
from mmssl.train import checkpoint as ckpt

TASKS = ("classification", "regression")
MODES = ("probe", "full")
COLUMN_KINDS = ("auto", "file", "value")

#: Defaults that depend on the mode: (epochs, batch size, head lr, weight decay).
DEFAULTS = {"probe": (100, 256, 1e-2, 0.0), "full": (10, 32, 1e-3, 0.05)}


class FinetuneError(ValueError):
    """Bad input for ``mmssl finetune``; the message names the file and column."""


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (``None`` takes the mode's default, see ``DEFAULTS``)."""

    encoder: Path
    modality: str
    train: Path
    test: Path
    output: Path
    label: str = "label"
    column: str | None = None
    column_kind: str = "auto"
    task: str = "classification"
    mode: str = "probe"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    encoder_lr: float | None = None
    layer_decay: float | None = None
    weight_decay: float | None = None
    augment: bool = False
    seed: int = 0
    val_fraction: float = 0.1
    save_features: bool = False
    device: str = "cpu"

    def resolved(self) -> FinetuneConfig:
        """Check the choices and fill in the mode's defaults."""
        for name, value, allowed in (
            ("task", self.task, TASKS),
            ("mode", self.mode, MODES),
            ("column kind", self.column_kind, COLUMN_KINDS),
        ):
            if value not in allowed:
                raise FinetuneError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FinetuneError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise FinetuneError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if self.augment and self.mode != "full":
            raise FinetuneError("--augment needs --mode full (probe embeds each row once)")
        epochs, batch_size, lr, weight_decay = DEFAULTS[self.mode]
        out = replace(
            self,
            encoder=Path(self.encoder),
            train=Path(self.train),
            test=Path(self.test),
            output=Path(self.output),
            epochs=self.epochs or epochs,
            batch_size=self.batch_size or batch_size,
            lr=self.lr or lr,
            weight_decay=weight_decay if self.weight_decay is None else self.weight_decay,
        )
        if out.epochs < 1 or out.batch_size < 1 or out.lr <= 0:
            raise FinetuneError("--epochs, --batch-size and --lr must be positive")
        if out.mode == "full" and out.encoder_lr is None:
            out.encoder_lr = out.lr / 10
        return out


@dataclass
class LabelledRows:
    """The usable rows of a manifest: modality values, raw labels and their row numbers (0-based)."""

    path: Path
    values: list[Any]
    labels: list[Any]
    rows: list[int]
    column_kind: str
    skipped: int = 0


@dataclass
class Targets:
    """Encoded labels: class indices (classification) or floats (regression)."""

    train: Tensor
    test: Tensor
    classes: list[Any] | None = None


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    encoder: nn.Module
    head: LinearHead
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    predictions: Tensor | None = None


# Reading the encoder.


def encoder_kind(path: Path) -> tuple[str, Path]:
    """``("run", folder/recipe.yaml)`` or ``("recipe", file)``.

    Raises:
        FinetuneError: ``path`` is neither a run folder nor a recipe file.
    """
    path = Path(path)
    if path.is_dir() and (path / "recipe.yaml").is_file():
        return "run", path / "recipe.yaml"
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return "recipe", path
    what = "a folder without recipe.yaml" if path.is_dir() else ("not found" if not path.exists() else "a file")
    raise FinetuneError(
        f"encoder {path} ({what}) is neither an mmssl run folder (a folder with recipe.yaml, written by "
        "`mmssl train`) nor a recipe file (.yaml)"
    )


def recipe_column(path: Path, modality: str) -> str:
    """The data column of ``modality`` in the recipe of a run folder or recipe file.

    Raises:
        FinetuneError: The path is neither, or the recipe has no such modality.
    """
    from mmssl.recipe import load_yaml

    _, recipe_file = encoder_kind(path)
    modalities = load_yaml(recipe_file).get("modalities") or {}
    if modality not in modalities:
        raise FinetuneError(f"modality {modality!r} is not in the recipe {recipe_file} (has {sorted(modalities)})")
    spec = modalities[modality]
    return str((spec.get("column") if isinstance(spec, dict) else None) or modality)


def load_encoder(path: Path, modality: str, fit_values: list[Any], seed: int) -> tuple[nn.Module, Processor, str, bool]:
    """``(encoder, processor, kind, released)`` of ``modality``.

    A run folder gives its trained encoder and fitted processor. A recipe gives a released encoder
    (``modalities.<m>.encoder``) or a random init (drawn from ``seed``) of the plugin's own, with a processor
    fitted on ``fit_values`` (the training manifest's column).
    """
    from mmssl.build import Plan, build_encoder, prepare_released, validate_plugin_sections
    from mmssl.recipe import load_yaml, parse_recipe

    kind, recipe_file = encoder_kind(path)
    if kind == "run":
        from mmssl.run import load_run

        run = load_run(path)
        released = run.plan.recipe.modalities[modality].encoder is not None
        return run.model.encoders[modality], run.processors[modality], kind, released
    tree = load_yaml(recipe_file)
    plan = validate_plugin_sections(parse_recipe(tree, str(recipe_file), recipe_file.resolve().parent), str(path))
    recipe = plan.recipe
    sub = Plan(
        recipe.model_copy(update={"modalities": {modality: recipe.modalities[modality]}}),
        plugins={modality: plan.plugins[modality]},
        modality_options={modality: plan.modality_options[modality]},
    )
    prepare_released(sub)
    plugin = sub.plugins[modality]
    processor = plugin.build_processor(sub.modality_options[modality], iter(fit_values))
    torch.manual_seed(seed)
    encoder = build_encoder(sub, modality, processor)
    return encoder, processor, kind, recipe.modalities[modality].encoder is not None


# Reading the labelled manifests.


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long text is not a valid file name (ENAMETOOLONG)
        return False


def _looks_like_files(values: list[Any], folder: Path) -> bool:
    sample = values[:20]
    return bool(sample) and all(
        isinstance(v, str | Path) and len(str(v)) < 4096 and _is_file(folder / str(v)) for v in sample
    )


def read_labelled(path: Path, column: str, label: str, column_kind: str = "auto", modality: str = "") -> LabelledRows:
    """Rows of a manifest (any file the ``manifest`` source reads) with a value in ``column`` and a ``label``.

    ``column_kind`` ``file`` resolves the column's values as paths relative to the manifest's folder, ``value``
    keeps them as they are, ``auto`` picks ``file`` when the first values name existing files.
    """
    path = Path(path).resolve()
    try:
        source = load_manifest(ManifestOptions(path=str(path)), path.parent)
    except FileNotFoundError as err:
        raise FinetuneError(str(err)) from None
    columns = list(source.columns)
    for row in source.rows:
        columns.extend(c for c in row if c not in columns)
    if not source.rows:
        raise FinetuneError(f"{path}: the manifest has no rows")
    if label not in columns:
        raise FinetuneError(f"{path}: label column {label!r} not found; columns are {columns} (set --label)")
    if column not in columns:
        raise FinetuneError(
            f"{path}: column {column!r} of modality {modality!r} not found; columns are {columns} (set --column)"
        )
    present = [row.get(column) for row in source.rows if not is_missing(row.get(column))]
    if column_kind == "auto":
        column_kind = "file" if _looks_like_files(present, path.parent) else "value"
    if column_kind == "file":
        source = load_manifest(ManifestOptions(path=str(path), path_columns=[column]), path.parent)
    values, labels, rows = [], [], []
    for i, row in enumerate(source.rows):
        value, target = row.get(column), row.get(label)
        if is_missing(value) or is_missing(target):
            continue
        values.append(value)
        labels.append(target)
        rows.append(i)
    if not values:
        raise FinetuneError(f"{path}: no row has both column {column!r} and label {label!r}")
    return LabelledRows(path, values, labels, rows, column_kind, len(source.rows) - len(values))


def _class_key(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return str(value)


def encode_labels(train: LabelledRows, test: LabelledRows, label: str, task: str) -> Targets:
    """Class indices over the sorted classes of the training manifest, or float targets.

    Raises:
        FinetuneError: One class only, test classes unseen in training, or regression labels that are not numbers.
    """
    if task == "regression":

        def numbers(data: LabelledRows) -> Tensor:
            out = []
            for row, value in zip(data.rows, data.labels, strict=True):
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if isinstance(value, bool) or not math.isfinite(number):
                    raise FinetuneError(
                        f"{data.path}: regression label column {label!r} holds a value that is not a finite number "
                        f"(row {row + 1}: {value!r})"
                    )
                out.append(number)
            return torch.tensor(out, dtype=torch.float64)

        return Targets(numbers(train), numbers(test))
    train_keys = [_class_key(v) for v in train.labels]
    test_keys = [_class_key(v) for v in test.labels]
    if len({type(k) for k in train_keys + test_keys}) > 1:  # mixed numbers and names: compare as text
        train_keys, test_keys = [str(k) for k in train_keys], [str(k) for k in test_keys]
    classes = sorted(set(train_keys))
    if len(classes) < 2:
        raise FinetuneError(
            f"{train.path}: label column {label!r} has one class ({classes[0]!r}); classification needs at least "
            "two (use --task regression for numeric targets)"
        )
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted({str(k) for k in test_keys if k not in index})
    if unseen:
        raise FinetuneError(
            f"{test.path}: label column {label!r} has classes not in the training manifest {train.path}: "
            f"{unseen[:10]}{' ...' if len(unseen) > 10 else ''}"
        )
    return Targets(torch.tensor([index[k] for k in train_keys]), torch.tensor([index[k] for k in test_keys]), classes)


def validation_split(targets: Tensor, fraction: float, stratify: bool, seed: int) -> tuple[Tensor, Tensor]:
    """``(train indices, validation indices)``, sorted; per class when ``stratify``. Empty validation at 0."""
    n = len(targets)
    if fraction <= 0 or n < 2:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    rng = np.random.default_rng(seed)
    y = targets.numpy()
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(n)]
    val: list[int] = []
    for idx in groups:
        take = min(int(round(fraction * len(idx))), len(idx) - 1)
        val.extend(rng.permutation(idx)[:take].tolist())
    if not val:  # too few rows for the fraction: hold out one row of the largest group
        largest = max(groups, key=len)
        val = [int(rng.choice(largest))]
    held = np.zeros(n, dtype=bool)
    held[val] = True
    return torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))


# Model parts.


class LinearHead(nn.Module):
    """A linear layer on standardised features; for regression it predicts standardised targets.

    Buffers ``feature_mean``/``feature_std`` [D] and ``target_mean``/``target_std`` [] travel with the weights,
    so ``head.safetensors`` alone maps pooled features to predictions.
    """

    def __init__(
        self, mean: Tensor, std: Tensor, outputs: int, target_mean: float = 0.0, target_std: float = 1.0
    ) -> None:
        super().__init__()
        self.register_buffer("feature_mean", mean.float().clone())
        self.register_buffer("feature_std", std.float().clamp_min(1e-6).clone())
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.linear = nn.Linear(len(mean), outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor) -> Tensor:
        """Shapes: features [B, D] -> [B, outputs] (logits or standardised targets)."""
        return self.linear((features.float() - self.feature_mean) / self.feature_std)

    def predict(self, features: Tensor) -> Tensor:
        """Class indices [B] or targets in label units [B]."""
        out = self(features)
        if self.linear.out_features == 1:
            return out[:, 0] * self.target_std + self.target_mean
        return out.argmax(dim=1)


def _pooled(encoder: nn.Module, processor: Processor, samples: list[Any], device: str) -> Tensor:
    return encoder(processor.collate(samples).to(device)).pooled.float()


@torch.no_grad()
def embed(encoder: nn.Module, processor: Processor, values: list[Any], batch_size: int, device: str) -> Tensor:
    """Pooled features of raw values with the encoder in eval mode. Shapes: -> [N, D] float32 on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = [
        _pooled(
            encoder, processor, [processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]], device
        ).cpu()
        for lo in range(0, len(values), batch_size)
    ]
    encoder.train(was_training)
    return torch.cat(out)


def _loss(task: str, out: Tensor, y: Tensor, head: LinearHead) -> Tensor:
    if task == "classification":
        return F.cross_entropy(out, y.to(out.device))
    target = (y.to(out.device).float() - head.target_mean) / head.target_std
    return F.mse_loss(out[:, 0], target)


def _cosine(total: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _snapshot(modules: list[nn.Module]) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def train_epochs(
    modules: list[nn.Module],
    optimizer: torch.optim.Optimizer,
    n_train: int,
    batch_size: int,
    epochs: int,
    seed: int,
    loss_of: Callable[[Tensor], Tensor],
    validate: Callable[[], tuple[tuple[float, ...], dict[str, float]]] | None,
    log: Callable[[str], None] | None = None,
) -> tuple[int, list[dict[str, float]]]:
    """Mini-batch AdamW with a cosine decay to 0 over all steps; the epoch with the lowest ``validate`` key wins.

    The modules end with the weights of that epoch (the last one without ``validate``), in eval mode.
    Returns ``(best epoch, per-epoch history)``.
    """
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(n_train / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps))
    best_key: tuple[float, ...] | None = None
    best_epoch, best_state = epochs, None
    history = []
    for epoch in range(1, epochs + 1):
        for module in modules:
            module.train()
        order = torch.randperm(n_train, generator=generator)
        total, count = 0.0, 0
        for lo in range(0, n_train, batch_size):
            idx = order[lo : lo + batch_size]
            loss = loss_of(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        for module in modules:
            module.eval()
        record = {"epoch": epoch, "train_loss": total / count}
        if validate is not None:
            key, metrics = validate()
            record |= metrics
            if best_key is None or key < best_key:
                best_key, best_epoch, best_state = key, epoch, _snapshot(modules)
        history.append(record)
        if log is not None and (epoch % max(1, epochs // 10) == 0 or epoch == epochs):
            log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    if best_state is not None:
        for module, state in zip(modules, best_state, strict=True):
            module.load_state_dict(state)
    return best_epoch, history


def _val_scores(task: str, head: LinearHead, out: Tensor, y: Tensor) -> tuple[tuple[float, ...], dict[str, float]]:
    loss = float(_loss(task, out, y, head))
    if task == "classification":
        top1 = float((out.argmax(1).cpu() == y.cpu()).double().mean())
        return (-top1, loss), {"val_top1": top1, "val_loss": loss}
    pred = (out[:, 0] * head.target_std + head.target_mean).cpu().double()
    rmse = float(((pred - y.cpu().double()) ** 2).mean().sqrt())
    return (loss,), {"val_rmse": rmse, "val_loss": loss}


def _head_for(task: str, features: Tensor, y: Tensor, num_classes: int) -> LinearHead:
    mean, std = features.mean(0), features.std(0, unbiased=False)
    if task == "classification":
        return LinearHead(mean, std, num_classes)
    return LinearHead(mean, std, 1, float(y.mean()), float(y.std(unbiased=False).clamp_min(1e-12)))


def fit_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor | None,
    val_y: Tensor | None,
    task: str,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> tuple[LinearHead, int, list[dict[str, float]]]:
    """Train a ``LinearHead`` on fixed features (standardised with the train rows' mean and std).

    Shapes: train_x [N, D], train_y [N] (long classes or float targets), val_x [V, D], val_y [V].
    """
    torch.manual_seed(seed)
    head = _head_for(task, train_x, train_y, num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_of(idx: Tensor) -> Tensor:
        return _loss(task, head(train_x[idx]), train_y[idx], head)

    validate = None
    if val_x is not None and len(val_x):

        @torch.no_grad()
        def validate() -> tuple[tuple[float, ...], dict[str, float]]:
            return _val_scores(task, head, head(val_x), val_y)

    best, history = train_epochs([head], optimizer, len(train_x), batch_size, epochs, seed, loss_of, validate, log)
    return head, best, history


def fit_full(
    encoder: nn.Module,
    processor: Processor,
    train_values: list[Any],
    train_y: Tensor,
    val_values: list[Any],
    val_y: Tensor,
    task: str,
    num_classes: int,
    cfg: FinetuneConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[LinearHead, int, list[dict[str, float]]]:
    """Train encoder and head end to end; the head's feature statistics come from the encoder before training."""
    from mmssl.train.optim import layer_scales, param_groups

    device = cfg.device
    torch.manual_seed(cfg.seed)
    start = embed(encoder, processor, train_values, cfg.batch_size, device)
    head = _head_for(task, start, train_y, num_classes).to(device)
    scales = layer_scales([encoder], cfg.layer_decay) if cfg.layer_decay is not None else None
    groups = param_groups(encoder, cfg.weight_decay, cfg.encoder_lr, scales) + param_groups(
        head, cfg.weight_decay, cfg.lr
    )
    if not any(p.requires_grad for p in encoder.parameters()) and log is not None:
        log("note: the encoder has no trainable parameter (its recipe freezes it); only the head trains")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)

    def loss_of(idx: Tensor) -> Tensor:
        samples = [processor.decode(train_values[i]) for i in idx.tolist()]
        samples = [processor.augment(s, rng) if cfg.augment else processor.prepare(s) for s in samples]
        return _loss(task, head(_pooled(encoder, processor, samples, device)), train_y[idx], head)

    validate = None
    if val_values:

        @torch.no_grad()
        def validate() -> tuple[tuple[float, ...], dict[str, float]]:
            features = embed(encoder, processor, val_values, cfg.batch_size, device)
            return _val_scores(task, head, head(features.to(device)), val_y)

    best, history = train_epochs(
        [encoder, head], optimizer, len(train_values), cfg.batch_size, cfg.epochs, cfg.seed, loss_of, validate, log
    )
    return head, best, history


# Metrics.


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


# The command.


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] | None = print) -> FinetuneResult:
    """Fine-tune or probe ``cfg.encoder`` on ``cfg.train`` and score ``cfg.test``; write ``cfg.output``.

    Writes ``eval.json``, ``head.safetensors``, ``encoder.safetensors`` (full mode), ``labels.json``
    (classification), ``predictions.csv``, ``finetune.json`` (settings and per-epoch history), the processor
    under ``processors/<modality>`` and, with ``save_features`` (probe), ``features.safetensors``.

    Raises:
        FinetuneError: Bad encoder path, modality, manifest column or labels; the message names the file.
    """
    cfg = cfg.resolved()
    column = recipe_column(cfg.encoder, cfg.modality)  # checks the encoder path and the modality first
    column = cfg.column or column
    train, test = (read_labelled(p, column, cfg.label, cfg.column_kind, cfg.modality) for p in (cfg.train, cfg.test))
    targets = encode_labels(train, test, cfg.label, cfg.task)
    encoder, processor, kind, released = load_encoder(cfg.encoder, cfg.modality, train.values, cfg.seed)
    classification = cfg.task == "classification"
    num_classes = len(targets.classes) if classification else 1
    fit_idx, val_idx = validation_split(targets.train, cfg.val_fraction, classification, cfg.seed)
    if log is not None:
        log(
            f"{cfg.mode} {cfg.task} of {cfg.modality} ({kind} {cfg.encoder}): rows train {len(fit_idx)}, "
            f"val {len(val_idx)}, test {len(test.values)}" + (f", {num_classes} classes" if classification else "")
        )
    encoder = encoder.to(cfg.device)
    fit_y, val_y = targets.train[fit_idx], targets.train[val_idx]
    features: dict[str, Tensor] = {}
    if cfg.mode == "probe":
        encoder.requires_grad_(False)
        all_train = embed(encoder, processor, train.values, cfg.batch_size, cfg.device)
        test_x = embed(encoder, processor, test.values, cfg.batch_size, cfg.device)
        fit_x, val_x = all_train[fit_idx], all_train[val_idx]
        features = {"train": fit_x, "train_labels": fit_y, "val": val_x, "val_labels": val_y}
        features |= {"test": test_x, "test_labels": targets.test}
        head, best, history = fit_probe(
            fit_x, fit_y, val_x, val_y, cfg.task, num_classes, cfg.epochs, cfg.batch_size, cfg.lr,
            cfg.weight_decay, cfg.seed, log,
        )  # fmt: skip
    else:
        head, best, history = fit_full(
            encoder,
            processor,
            [train.values[i] for i in fit_idx.tolist()],
            fit_y,
            [train.values[i] for i in val_idx.tolist()],
            val_y,
            cfg.task,
            num_classes,
            cfg,
            log,
        )
        test_x = embed(encoder, processor, test.values, cfg.batch_size, cfg.device)
    head = head.cpu().eval()
    with torch.no_grad():
        predictions = head.predict(test_x)
    metrics: dict[str, float] = {}
    chosen = history[best - 1]
    if classification:
        scores = classification_metrics(targets.test, predictions)
        metrics["finetune_top1"] = scores["top1"]
        metrics["finetune_macro_f1"] = scores["macro_f1"]
        if "val_top1" in chosen:
            metrics["finetune_val_top1"] = chosen["val_top1"]
        metrics["chance"] = float(torch.bincount(targets.test).max() / len(targets.test))
        metrics["num_classes"] = float(num_classes)
    else:
        scores = regression_metrics(targets.test, predictions, float(fit_y.mean()))
        metrics |= {f"finetune_{k}": v for k, v in scores.items() if k != "baseline_rmse"}
        metrics["baseline_rmse"] = scores["baseline_rmse"]
        if "val_rmse" in chosen:
            metrics["finetune_val_rmse"] = chosen["val_rmse"]
    metrics["finetune_epoch"] = float(best)

    out = cfg.output
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_weights(head, out / "head.safetensors")
    if cfg.mode == "full":
        ckpt.save_weights(encoder, out / "encoder.safetensors")
    if cfg.save_features and features:
        ckpt.save_tensors_atomic(features, out / "features.safetensors")
    processor.save(_fresh_dir(out / "processors" / cfg.modality))
    if classification:
        ckpt.atomic_write_text(
            out / "labels.json", json.dumps({"column": cfg.label, "classes": targets.classes}, indent=2) + "\n"
        )
    lines = ["row,label,prediction"]
    for row, raw, pred in zip(test.rows, test.labels, predictions.tolist(), strict=True):
        shown = targets.classes[pred] if classification else repr(float(pred))
        lines.append(f"{row},{_csv(raw)},{_csv(shown)}")
    ckpt.atomic_write_text(out / "predictions.csv", "\n".join(lines) + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    settings |= {
        "encoder_kind": kind,
        "released": released,
        "column": column,
        "column_kind": train.column_kind,
        "rows": {"train": len(fit_idx), "val": len(val_idx), "test": len(test.values)},
        "skipped_rows": {"train": train.skipped, "test": test.skipped},
        "feature_dim": int(head.feature_mean.numel()),
        "best_epoch": best,
        "history": history,
    }
    ckpt.atomic_write_text(out / "finetune.json", json.dumps(settings, indent=2) + "\n")
    ckpt.atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return FinetuneResult(metrics, encoder.cpu(), head, best, history, predictions)


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _csv(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
