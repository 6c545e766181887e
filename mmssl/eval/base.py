"""Evaluators: registered by name with an options model; each returns flat ``metric name -> number``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mmssl.data.errors import SkippedRow, readable_rows
from mmssl.data.sources import Source
from mmssl.eval.embed import embed_features, labelled_values, project_embeddings, raw_features
from mmssl.modality import Processor
from mmssl.registry import Registry


class EvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    prefix: str | None = Field(None, description="Prefix of the metric names (default: the evaluator's own).")
    batch_size: int = Field(256, ge=1)


Need = Literal["labels", "class_names"]


def _no_needs(options: Any) -> list[tuple[str, Need]]:
    return []


def _no_reads(options: Any) -> list[tuple[str, str, str]]:
    return []


@dataclass(frozen=True)
class EvaluatorType:
    """A registered evaluation.

    Attributes:
        splits: options -> the data splits it reads (must be in the recipe).
        modalities: options -> the modalities it embeds (must be in the recipe).
        needs: options -> ``(split, need)`` pairs checked before training: ``labels`` (rows with a label) or
            ``class_names`` (the split's source names its classes).
        reads: options -> the ``(modality, split, features)`` frozen embeddings it reads through
            ``EvalContext.features``; every read-out of a split is embedded in one pass (``features_of``).
    """

    name: str
    options: type[EvalOptions]
    run: Callable[[Any, EvalContext], dict[str, float]]
    splits: Callable[[Any], list[str]]
    modalities: Callable[[Any], list[str]]
    needs: Callable[[Any], list[tuple[str, Need]]] = _no_needs
    reads: Callable[[Any], list[tuple[str, str, str]]] = _no_reads


EvaluatorRun = Callable[[Any, "EvalContext"], dict[str, float]]
"""``(options, context) -> metric name -> number``."""

EVALUATORS: Registry[EvaluatorType] = Registry("evaluation", group="mmssl.evaluations", builtins=("mmssl.eval",))


def register_evaluator(
    name: str,
    options: type[EvalOptions],
    splits: Callable[[Any], list[str]] | None = None,
    modalities: Callable[[Any], list[str]] | None = None,
    needs: Callable[[Any], list[tuple[str, Need]]] = _no_needs,
    reads: Callable[[Any], list[tuple[str, str, str]]] = _no_reads,
) -> Callable[[EvaluatorRun], EvaluatorRun]:
    """Register ``run`` as the evaluation ``name`` (see ``EvaluatorType``). An evaluator that declares its frozen
    embeddings (``reads``) may leave out ``splits`` and ``modalities``: they are the ones its reads name."""
    if (splits is None or modalities is None) and reads is _no_reads:
        raise TypeError(f"evaluator {name!r}: give splits and modalities, or reads to derive them from")

    def named(position: int) -> Callable[[Any], list[str]]:
        return lambda options: list(dict.fromkeys(read[position] for read in reads(options)))

    def wrap(run: EvaluatorRun) -> EvaluatorRun:
        kind = EvaluatorType(name, options, run, splits or named(1), modalities or named(0), needs, reads)
        EVALUATORS.register(name, kind)
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
        on_error: ``data.on_error``: under ``skip`` a split's rows with a value that cannot be decoded are left
            out (and listed in ``skipped``).
        features_of: (modality, split) -> every ``features`` the evaluations read of it (``run_evaluations``
            fills it), so that one pass over the split embeds them all.
    """

    model: Any
    processors: dict[str, Processor]
    columns: dict[str, str]
    load_split: Callable[[str], Source]
    build_random_model: Callable[[], Any]
    device: torch.device | str = "cpu"
    baseline_name: str = "random_init"
    on_error: str = "raise"
    skipped: dict[str, list[SkippedRow]] = field(default_factory=dict)
    features_of: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _sources: dict[str, Source] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def source(self, split: str) -> Source:
        if split not in self._sources:
            source = self.load_split(split)
            if self.on_error == "skip":
                source, self.skipped[split] = readable_rows(source, self.columns, self.processors)
            self._sources[split] = source
        return self._sources[split]

    def labelled(self, modality: str, split: str) -> tuple[list[Any], np.ndarray]:
        """Values and labels of the split's labelled rows of ``modality`` (see ``labelled_values``)."""
        key = ("labelled", modality, split)
        if key not in self._cache:
            self._cache[key] = labelled_values(self.source(split), self.columns[modality])
        found: tuple[list[Any], np.ndarray] = self._cache[key]
        return found

    def embeddings(self, model: Any, modality: str, split: str, features: str, batch_size: int) -> Tensor:
        """Embeddings of the split's labelled rows, computed once per model, modality, split and features, so
        evaluations that share a split (kNN and the linear probe) embed it once. The first call for a split also
        embeds the other ``features_of`` it in the same pass; ``projected`` is always the projection of the (cached)
        pooled embeddings.

        Shapes: -> [N, D] float32 on the CPU.
        """
        key = ("embed", id(model), modality, split, features)
        if key not in self._cache and features == "projected":  # a function of the pooled rows: project those
            pooled = self.embeddings(model, modality, split, "pooled", batch_size)
            self._cache[key] = project_embeddings(model, modality, pooled, batch_size, self.device)
        if key not in self._cache:
            wanted = sorted({features} | self.features_of.get((modality, split), set()) - {"projected"})
            missing = tuple(f for f in wanted if ("embed", id(model), modality, split, f) not in self._cache)
            values, _ = self.labelled(modality, split)
            processor = self.processors[modality]
            found = embed_features(model, modality, processor, values, missing, batch_size, self.device)
            for feature, emb in found.items():
                self._cache[("embed", id(model), modality, split, feature)] = emb
        embedded: Tensor = self._cache[key]
        return embedded

    def raw(self, modality: str, splits: tuple[str, ...]) -> list[Tensor] | None:
        """The raw-input baseline of the splits' labelled rows (``raw_features`` over all of them at once: one
        padding shape, one vocabulary), split back per split; None when the modality has no raw baseline."""
        key = ("raw", modality, splits)
        if key not in self._cache:
            values = [self.labelled(modality, split)[0] for split in splits]
            raw = raw_features(self.processors[modality], [v for part in values for v in part])
            if raw is None:
                self._cache[key] = None
            else:
                self._cache[key] = list(torch.split(raw, [len(part) for part in values]))
        found: list[Tensor] | None = self._cache[key]
        return found

    @cached_property
    def random_model(self) -> Any:
        return self.build_random_model().to(self.device)


@dataclass
class EvalReport:
    """What the evaluations of a run gave: flat metric name -> number, and evaluation -> error for those that failed.

    ``as_json`` is what ``eval.json`` holds: the metrics, plus ``"errors": {...}`` when some evaluation failed and
    ``"skipped_rows": {split: count}`` when rows that could not be read were left out (``data.on_error: skip``).
    """

    results: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped_rows: dict[str, int] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)  # evaluation label -> position in ``evaluations``

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.results)
        if self.errors:
            out["errors"] = dict(self.errors)
        if self.skipped_rows:
            out["skipped_rows"] = dict(self.skipped_rows)
        return out


def evaluation_label(kind: EvaluatorType, options: BaseModel, taken: set[str]) -> str:
    """``prefix`` or the evaluator's name; ``name[2]``, ``name[3]``, ... for repeats."""
    label = getattr(options, "prefix", None) or kind.name
    n = 1
    while (candidate := label if n == 1 else f"{label}[{n}]") in taken:
        n += 1
    return candidate


def run_evaluations(
    evaluations: list[tuple[EvaluatorType, BaseModel]],
    ctx: EvalContext,
    on_update: Callable[[EvalReport], None] | None = None,
) -> EvalReport:
    """Run every evaluation; one that raises is recorded in ``errors`` and the others still run.

    Args:
        on_update: Called with the report after each evaluation (e.g. to write ``eval.json`` at once).
    """
    report = EvalReport()
    labels: set[str] = set()
    for kind, options in evaluations:
        for modality, split, features in kind.reads(options):
            ctx.features_of.setdefault((modality, split), set()).add(features)
    for i, (kind, options) in enumerate(evaluations):
        label = evaluation_label(kind, options, labels)
        labels.add(label)
        report.index[label] = i
        try:
            found = {key: float(value) for key, value in kind.run(options, ctx).items()}
            clash = sorted(set(found) & set(report.results))
            if clash:
                raise ValueError(f"writes {clash[0]!r}, as an evaluation before it did; set a distinct `prefix`")
        except Exception as err:  # noqa: BLE001  (any failure of one evaluation is recorded, the others run)
            report.errors[label] = f"{type(err).__name__}: {err}"
        else:
            report.results.update(found)
        report.skipped_rows = {split: len(rows) for split, rows in ctx.skipped.items() if rows}
        if on_update is not None:
            on_update(report)
    return report
