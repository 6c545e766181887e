"""The training step's objective contract: an objective declares what it reads and whether it takes partial
batches, and the step refuses a module that does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmssl.batch import CLEAN
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.teacher import EMATeacher
from mmssl.train.step import AfterStep, Objective, TrainModule


class Tower(nn.Module):
    width = 3

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 3)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        h = self.layer(batch.data)
        return EncoderOutput(tokens=h[:, None], pooled=h)


class Declared(nn.Module):
    partial_rows = False

    def __init__(self) -> None:
        super().__init__()
        self.inputs = [("x", CLEAN)]
        self.teacher = EMATeacher(encoders={"encoder": "x"})

    def forward(self, ctx: object) -> dict[str, torch.Tensor]:
        return {"loss": torch.zeros(())}


class Undeclared(nn.Module):
    def forward(self, ctx: object) -> dict[str, torch.Tensor]:
        return {"loss": torch.zeros(())}


def test_an_objective_must_declare_its_inputs() -> None:
    model = JointEmbeddingModel({"x": Tower()}, 2)
    assert isinstance(Declared(), Objective) and not isinstance(Undeclared(), Objective)
    with pytest.raises(TypeError, match="objective 'bad' \\(Undeclared\\) must declare `inputs` and `partial_rows`"):
        TrainModule(model, {"bad": Undeclared()}, {"bad": 1.0}, {})


def test_after_step_hooks_run_once_per_step_on_the_parts_that_have_one() -> None:
    model = JointEmbeddingModel({"x": Tower()}, 2)
    objective = Declared()
    module = TrainModule(model, {"ok": objective}, {"ok": 1.0}, {})
    assert isinstance(objective.teacher, AfterStep) and not isinstance(objective, AfterStep)
    objective.teacher.ensure("encoder", model.encoders["x"])
    for step in (1, 2, 3):
        module.after_optimizer_step(step, 10)
    assert int(objective.teacher.steps) == 3
