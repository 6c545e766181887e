"""``train.activation_checkpointing`` and ``train.compile``: same losses and gradients, same parameter names."""

from __future__ import annotations

import pytest
import torch
from tiny_towers import build, grads, make_batch
from tolerances import F32, F32_SCALAR

from mmssl.train.speed import apply_speed_options, checkpoint_blocks, checkpointed_modalities


def step(kind: str, checkpointing: bool | list[str], compile: bool, dropout: float) -> tuple[float, dict]:
    module = build(kind, dropout=dropout)
    apply_speed_options(dict(module.model.encoders), checkpointing, compile)
    torch.manual_seed(5)
    terms = module(make_batch(kind, 8, seed=1))
    terms["loss"].backward()
    return float(terms["loss"].detach()), grads(module)


def test_activation_checkpointing_keeps_loss_gradients_and_dropout_noise() -> None:
    """Recomputed blocks replay their dropout masks (RNG preserved), so even with dropout the gradients match."""
    want_loss, want = step("clip", False, False, dropout=0.2)
    got_loss, got = step("clip", ["image", "text"], False, dropout=0.2)
    assert got_loss == pytest.approx(want_loss, **F32_SCALAR)
    assert got.keys() == want.keys()  # parameter names (checkpoints, exports) unchanged
    for name in want:
        torch.testing.assert_close(got[name], want[name], **F32, msg=name)


def test_checkpointing_wraps_each_block_once_and_names_are_checked() -> None:
    module = build("clip")
    assert checkpoint_blocks(module.model.encoders["image"], "image") == 2
    first = module.model.encoders["image"].transformer.blocks[0].forward
    checkpoint_blocks(module.model.encoders["image"], "image")
    assert module.model.encoders["image"].transformer.blocks[0].forward is first
    assert checkpointed_modalities(True, ["image", "text"]) == ["image", "text"]
    with pytest.raises(ValueError, match=r"names \['audio'\], not modalities"):
        checkpointed_modalities(["audio"], ["image", "text"])
    with pytest.raises(ValueError, match="exposes no blocks"):
        checkpoint_blocks(torch.nn.Linear(2, 2), "image")


@pytest.mark.slow
def test_compiled_encoders_give_the_same_step() -> None:
    want_loss, want = step("clip", False, False, dropout=0.0)
    got_loss, got = step("clip", False, True, dropout=0.0)
    assert got_loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert got.keys() == want.keys()
    for name in want:
        scale = max(1.0, float(want[name].abs().max()))
        torch.testing.assert_close(got[name], want[name], rtol=F32["rtol"], atol=F32["atol"] * scale, msg=name)
