"""Evaluators: registered by name with an options model; each returns flat ``metric name -> number``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from mmssl.data.sources import Source
from mmssl.modality import Processor
from mmssl.registry import Registry


class EvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    prefix: str | None = Field(None, description="Prefix of the metric names (default: the evaluator's own).")
    batch_size: int = Field(256, ge=1)


@dataclass(frozen=True)
class EvaluatorType:
    name: str
    options: type[EvalOptions]
    run: Callable[[Any, EvalContext], dict[str, float]]
    splits: Callable[[Any], list[str]]
    modalities: Callable[[Any], list[str]]


EVALUATORS: Registry[EvaluatorType] = Registry("evaluation")


def register_evaluator(
    name: str, options: type[EvalOptions], splits: Callable[[Any], list[str]], modalities: Callable[[Any], list[str]]
) -> Callable:
    def wrap(run: Callable[[Any, EvalContext], dict[str, float]]) -> Callable:
        EVALUATORS.register(name, EvaluatorType(name, options, run, splits, modalities))
        return run

    return wrap


@dataclass
class EvalContext:
    """What evaluators read: the trained model, a same-architecture random init, processors and data splits.

    Attributes:
        model: The trained ``JointEmbeddingModel``.
        processors: modality -> processor.
        columns: modality -> data column.
        load_split: split name -> ``Source``.
        build_random_model: Builds the model as it was before training (for baselines): fresh random weights, and
            released encoders as released.
        baseline_name: Suffix of the baseline's metrics: ``random_init``, or ``released`` when the recipe starts
            from a released encoder.
        device: Where to run the model.
    """

    model: Any
    processors: dict[str, Processor]
    columns: dict[str, str]
    load_split: Callable[[str], Source]
    build_random_model: Callable[[], Any]
    device: torch.device | str = "cpu"
    baseline_name: str = "random_init"
    _sources: dict[str, Source] = field(default_factory=dict)

    def source(self, split: str) -> Source:
        if split not in self._sources:
            self._sources[split] = self.load_split(split)
        return self._sources[split]

    @cached_property
    def random_model(self) -> Any:
        return self.build_random_model().to(self.device)


def run_evaluations(evaluations: list[tuple[EvaluatorType, BaseModel]], ctx: EvalContext) -> dict[str, float]:
    results: dict[str, float] = {}
    for kind, options in evaluations:
        for key, value in kind.run(options, ctx).items():
            if key in results:
                raise ValueError(f"evaluation {kind.name!r} writes {key!r} twice; set a distinct `prefix`")
            results[key] = float(value)
    return results
