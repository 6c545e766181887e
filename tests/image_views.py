"""A tiny image model and a batch of random views of random images, for objective tests that need real views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmssl.batch import Batch
from mmssl.data.dataset import make_view
from mmssl.modality import Processor
from mmssl.model import JointEmbeddingModel
from mmssl_image import ImageOptions, build_encoder, build_processor


def image_views_batch(
    options: ImageOptions, views: Sequence[str], rows: int
) -> tuple[JointEmbeddingModel, dict[str, Processor], Batch]:
    """The image encoder of ``options`` (torch seed 0, shared-space width 8), its processor, and a ``Batch`` of the
    named ``views`` (``view0``, ``local0``, ``clean`` ...) of ``rows`` random images, drawn from numpy seed 0.

    Shapes:
        each view: [rows, channels, S, S], S = image_size (local_size for local views)
    """
    torch.manual_seed(0)
    processor = build_processor(options, None)
    model = JointEmbeddingModel({"image": build_encoder(options)}, embed_dim=8)
    size, channels = options.image_size, options.channels
    samples = [torch.rand(channels, size, size, generator=torch.Generator().manual_seed(i)) for i in range(rows)]
    rng = np.random.default_rng(0)
    inputs = {v: processor.collate([make_view(processor, s, v, rng) for s in samples]) for v in views}
    batch = Batch({"image": inputs}, {"image": torch.ones(rows, dtype=torch.bool)}, None, torch.arange(rows))
    return model, {"image": processor}, batch
