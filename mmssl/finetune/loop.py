"""The training loops: mini-batch epochs with validation, the linear probe and full fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.finetune.config import FinetuneConfig
from mmssl.finetune.encoder import embed, pooled
from mmssl.finetune.head import LinearHead, head_for
from mmssl.modality import Processor


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
    head = head_for(task, train_x, train_y, num_classes)
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
    head = head_for(task, start, train_y, num_classes).to(device)
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
        return _loss(task, head(pooled(encoder, processor, samples, device)), train_y[idx], head)

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
