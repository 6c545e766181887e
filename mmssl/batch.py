"""What one training step reads: a ``Batch`` of ``ModalityBatch`` objects per modality and view.

The data machinery (:mod:`mmssl.data`) produces batches; objectives and the training step
(:mod:`mmssl.train.step`) read them. Both import this module, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmssl.modality import ModalityBatch

if TYPE_CHECKING:
    from mmssl.data.errors import SkippedRow

CLEAN = "clean"
"""The deterministic view (``Processor.prepare``); views named ``view0``, ``view1``, ... are random."""
LOCAL_PREFIX = "local"
"""Views named ``local0``, ``local1``, ... are small random local crops (``augment_local``, multi-crop)."""


@dataclass
class Batch:
    """One micro-batch.

    Attributes:
        inputs: modality -> view name -> batch of the rows that have that modality.
        present: modality -> [B] bool, which rows have that modality.
        labels: [B] long class labels (-1 where absent), or None.
        index: [B] long row indices in the source.
        skipped: Rows that could not be read and were replaced (``data.on_error: skip``), with step 0.
    """

    inputs: dict[str, dict[str, ModalityBatch]]
    present: dict[str, Tensor]
    labels: Tensor | None
    index: Tensor
    skipped: list[SkippedRow] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {m: {v: b.to(device) for v, b in views.items()} for m, views in self.inputs.items()},
            {m: p.to(device) for m, p in self.present.items()},
            None if self.labels is None else self.labels.to(device),
            self.index.to(device),
            self.skipped,
        )

    def __len__(self) -> int:
        return len(self.index)
