"""The ``mmssl finetune`` command: ``finetune()`` ties the parts together and writes the outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmssl.finetune.config import FinetuneConfig
from mmssl.finetune.data import encode_labels, read_labelled, validation_split
from mmssl.finetune.encoder import embed, load_encoder, recipe_column
from mmssl.finetune.head import LinearHead
from mmssl.finetune.loop import fit_full, fit_probe
from mmssl.finetune.metrics import classification_metrics, regression_metrics
from mmssl.train import checkpoint as ckpt


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    encoder: nn.Module
    head: LinearHead
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    predictions: Tensor | None = None


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] | None = print) -> FinetuneResult:
    """Fine-tune or probe ``cfg.encoder`` on ``cfg.train`` and score ``cfg.test``; write ``cfg.output``.

    Writes ``eval.json``, ``head.safetensors``, ``encoder.safetensors`` (full mode), ``labels.json``
    (classification), ``predictions.csv``, ``finetune.json`` (settings and per-epoch history), the processor
    under ``processors/<modality>`` and, with ``save_features`` (probe), ``features.safetensors``.

    Raises:
        FinetuneError: Bad encoder path, modality, manifest column or labels; the message names the file.
    """
    cfg = cfg.resolved()
    # Checks the encoder path and the modality first.
    column = recipe_column(cfg.encoder, cfg.modality, cfg.trust_plugins)
    column = cfg.column or column
    train, test = (read_labelled(p, column, cfg.label, cfg.column_kind, cfg.modality) for p in (cfg.train, cfg.test))
    targets = encode_labels(train, test, cfg.label, cfg.task, run_class_names(cfg.encoder))
    encoder, processor, kind, released = load_encoder(
        cfg.encoder, cfg.modality, train.values, cfg.seed, cfg.trust_plugins
    )
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


def run_class_names(encoder: Path) -> list[str] | None:
    """The class names of a run folder's label space (its ``labels.json``), when its labels were names."""
    path = Path(encoder) / "labels.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data.get("class_names") if data.get("named") else None


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _csv(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
