"""Builders: turn a compiled :class:`~mmssl.compiler.Plan` into processors, a model and objectives.

This is the one place plan entries become objects; modules never read the recipe. Validation, plugin loading and
released encoders happen once, before, in :func:`mmssl.compiler.compile_recipe`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from torch import nn

from mmssl.compiler import Plan
from mmssl.data.dataset import is_missing
from mmssl.data.errors import DataErrorPolicy, SkippedRow
from mmssl.data.labels import LabelSpace, apply_label_space, resolve_label_space
from mmssl.data.sources import Source
from mmssl.encoders.adapt import apply_training_mode
from mmssl.modality import ModalityBatch, ModalityPlugin, Processor, check_is_module, pooled_width
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.base import BuildInfo
from mmssl.train.step import TrainModule


def _load_raw(plan: Plan, split: str) -> Source:
    kind, options = plan.sources[split]
    return kind.load(options, plan.recipe.base_dir)


def label_space(plan: Plan, loaded: dict[str, Source] | None = None) -> LabelSpace:
    """The plan's label space, resolved over every split the first time (``loaded``: splits already read)."""
    if plan.labels is None:
        loaded = dict(loaded or {})
        plan.set_labels(resolve_label_space({s: loaded.get(s) or _load_raw(plan, s) for s in plan.sources}))
    assert plan.labels is not None
    return plan.labels


def load_source(plan: Plan, split: str) -> Source:
    """A split's rows, labels numbered by the run's one label space (the same mapping in every split)."""
    source = _load_raw(plan, split)
    return apply_label_space(source, label_space(plan, {split: source}))


def _corpus(source: Source, column: str) -> Iterator[Any]:
    for row in source.rows:
        value = row.get(column)
        if not is_missing(value):
            yield value


def build_processors(plan: Plan, train: Source, policy: DataErrorPolicy | None = None) -> dict[str, Processor]:
    """Fit each modality's processor on the training split's column.

    Under ``policy.skip`` a value the plugin cannot read while fitting is recorded (step 0) and left out: the
    plugin failed while reading the value it was last given, so that one is dropped and the fit starts over.
    """
    out = {}
    for modality, plugin in plan.plugins.items():
        column = plan.recipe.column_of(modality)
        if train.columns and column not in train.columns:
            raise KeyError(
                f"modality {modality!r} reads column {column!r}, not in {train.origin} (has {train.columns})"
            )
        out[modality] = _fit_skipping(plugin, plan.modality_options[modality], train, column, policy)
    return out


class _TrackedCorpus:
    """The non-missing values of a column, minus left-out rows, remembering the row it yielded last."""

    def __init__(self, train: Source, column: str, left_out: set[int]) -> None:
        self.train, self.column, self.left_out = train, column, left_out
        self.last: tuple[int, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        for i, row in enumerate(self.train.rows):
            value = row.get(self.column)
            if i not in self.left_out and not is_missing(value):
                self.last = (i, value)
                yield value


def _fit_skipping(
    plugin: ModalityPlugin, options: BaseModel, train: Source, column: str, policy: DataErrorPolicy | None
) -> Processor:
    left_out: set[int] = set()
    while True:
        corpus = _TrackedCorpus(train, column, left_out)
        try:
            return plugin.build_processor(options, iter(corpus))
        except Exception as err:
            if policy is None or not policy.skip or corpus.last is None:
                raise
            row, value = corpus.last
            left_out.add(row)
            policy.record([SkippedRow.of(0, row, train.origin, column, value, err)])


def save_processors(processors: dict[str, Processor], directory: Path) -> None:
    for modality, processor in processors.items():
        folder = directory / modality
        folder.mkdir(parents=True, exist_ok=True)
        processor.save(folder)


def load_processors(plan: Plan, directory: Path) -> dict[str, Processor]:
    return {m: plugin.load_processor(plan.modality_options[m], directory / m) for m, plugin in plan.plugins.items()}


def build_encoder(plan: Plan, modality: str, processor: Processor) -> nn.Module:
    """The plugin's own encoder, or a fresh copy of the released one set up to train as the recipe asks."""
    spec = plan.encoder_spec(modality)
    if spec is None:
        plugin = plan.plugins[modality]
        return check_is_module(plugin.build_encoder(plan.modality_options[modality], processor), plugin.name)
    if modality not in plan.released:
        raise ValueError(f"modalities.{modality}.encoder: the plan was compiled without weights")
    encoder = copy.deepcopy(plan.released[modality].encoder)
    apply_training_mode(encoder, spec.train, spec.lora, where=f"modalities.{modality}.encoder")
    return encoder


def build_model(plan: Plan, processors: dict[str, Processor]) -> JointEmbeddingModel:
    encoders = {m: build_encoder(plan, m, processors[m]) for m in plan.plugins}
    identity = {m for m, spec in plan.recipe.modalities.items() if spec.projection == "identity"}
    return JointEmbeddingModel(encoders, plan.recipe.model.embed_dim, identity)


def probe_batches(
    plan: Plan, processors: dict[str, Processor], train: Source, rows: int = 2
) -> dict[str, ModalityBatch]:
    """A tiny prepared batch of each modality, for builders that need target shapes (under ``data.on_error:
    skip``, of the first values that decode)."""
    out = {}
    for modality in plan.plugins:
        proc = processors[modality]
        samples = []
        for value in _corpus(train, plan.recipe.column_of(modality)):
            try:
                samples.append(proc.prepare(proc.decode(value)))
            except Exception:
                if plan.recipe.data.on_error != "skip":
                    raise
            if len(samples) == rows:
                break
        out[modality] = proc.collate(samples)
    return out


def build_train_module(
    plan: Plan, model: JointEmbeddingModel, processors: dict[str, Processor], probes: dict[str, ModalityBatch]
) -> TrainModule:
    info = BuildInfo(
        widths={m: e.width for m, e in model.encoders.items()},
        pooled_widths={m: pooled_width(e) for m, e in model.encoders.items()},
        embed_dim=model.embed_dim,
        processors=processors,
        probes=probes,
    )
    objectives: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    trained_projections: set[str] = set()
    for label, kind, options in plan.objectives:
        objectives[label] = kind.build(options, info)
        weights[label] = options.weight
        trained_projections.update(options.shared_space())
    for modality, projection in model.projections.items():
        # A projection no objective trains stays at its random init; freezing it keeps DDP from waiting for
        # gradients that never come.
        projection.requires_grad_(modality in trained_projections)
    return TrainModule(model, objectives, weights, processors)
