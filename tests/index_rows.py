"""A processor whose raw values are row indices, for evaluation tests whose model looks each row's features up."""

from __future__ import annotations

import torch

from mmssl.modality import ModalityBatch


class IndexRows:
    """Decodes and prepares nothing: a batch is the tensor of its rows' indices."""

    def decode(self, raw: int) -> int:
        return raw

    def prepare(self, sample: int) -> int:
        return sample

    def collate(self, samples: list[int]) -> ModalityBatch:
        return ModalityBatch(torch.tensor(samples))
