"""The settings of one fine-tuning run, their choices and mode defaults, and the error for bad input."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

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
    trust_plugins: bool = False

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
