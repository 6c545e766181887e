"""A ResNet with pyramid pooling (``pool_levels``): its pooled embedding is wider than its tokens, and every
objective head on the pooled embedding, and the shared-space projection, is built for that width."""

from __future__ import annotations

import pytest
import torch
from image_views import image_views_batch

from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import BuildInfo
from mmssl.train.step import StepContext
from mmssl_image import ImageOptions

OPTIONS = ImageOptions(
    image_size=16, patch_size=4, channels=1, width=16, encoder="resnet", pool_levels=[1, 2], mean=[0.5], std=[0.25]
)
VIEWS = ("view0", "view1")
POOLED_HEADS = {
    "simclr": {"proj_dim": 8, "hidden_dim": 16},
    "barlow_twins": {"proj_dim": 8, "hidden_dim": 16},
    "vicreg": {"proj_dim": 8, "hidden_dim": 16},
    "byol": {"proj_dim": 8, "hidden_dim": 16},
    "dino": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8},
}


@pytest.mark.parametrize("name", sorted(POOLED_HEADS))
def test_pooled_heads_take_the_pyramid_width(name: str) -> None:
    model, processors, batch = image_views_batch(OPTIONS, VIEWS, 6)
    assert model.encoders["image"].pooled_width == 5 * 16
    assert model.projections["image"].in_features == 80
    kind = OBJECTIVES.get(name)
    options = kind.options.model_validate({"name": name, "modality": "image", **POOLED_HEADS[name]})
    probe = {"image": batch.inputs["image"]["view0"]}
    objective = kind.build(options, BuildInfo({"image": 16}, 8, processors, probe, pooled_widths={"image": 80}))
    loss = objective(StepContext(model, batch, processors))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert model.encoders["image"].stem[0].weight.grad.abs().sum() > 0

    # A head built for the token width cannot take the pooled embedding: the width the builder is given matters.
    narrow = kind.build(options, BuildInfo({"image": 16}, 8, processors, probe))
    with pytest.raises(RuntimeError, match="shape|size"):
        narrow(StepContext(model, batch, processors))
