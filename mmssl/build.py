"""Builders: turn a validated recipe into plugins, processors, a model and objectives.

This is the one place recipe sections become objects; modules never read the recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

import mmssl.data.digits  # noqa: F401  (registers sklearn_digits and spoken_digits)
import mmssl.data.fashion_mnist  # noqa: F401  (registers the source)
import mmssl.data.spam_assassin  # noqa: F401  (registers the source)
import mmssl.data.twemoji  # noqa: F401  (registers the source)
import mmssl.eval  # noqa: F401  (registers evaluators)
from mmssl.data.dataset import CLEAN, is_missing
from mmssl.data.errors import DataErrorPolicy, SkippedRow
from mmssl.data.labels import LabelSpace, apply_label_space, resolve_label_space
from mmssl.data.sources import SOURCES, Source, SourceType
from mmssl.eval.base import EVALUATORS, EvaluatorType
from mmssl.modality import ModalityBatch, ModalityPlugin, Processor, check_is_module
from mmssl.model import JointEmbeddingModel, TrainModule
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, ObjectiveType, objective_requirements_error
from mmssl.plugins import PluginError, get_modality, load_entry_points, load_plugin_file
from mmssl.recipe import Recipe, RecipeError, pydantic_errors
from mmssl.registry import RegistryError
from mmssl.released import Released, ReleasedError, load_released, resolve_path
from mmssl.released.adapt import apply_training_mode
from mmssl.released.base import is_local_path


@dataclass
class Plan:
    """The typed, plugin-validated content of a recipe."""

    recipe: Recipe
    plugins: dict[str, ModalityPlugin] = field(default_factory=dict)
    modality_options: dict[str, BaseModel] = field(default_factory=dict)
    sources: dict[str, tuple[SourceType, BaseModel]] = field(default_factory=dict)
    objectives: list[tuple[str, ObjectiveType, ObjectiveOptions]] = field(default_factory=list)
    evaluations: list[tuple[EvaluatorType, BaseModel]] = field(default_factory=list)
    released: dict[str, Released] = field(default_factory=dict)
    labels: LabelSpace | None = None
    """The run's one label space (``labels.json`` of a run folder); resolved over all splits when first needed."""

    def views(self) -> dict[str, list[str]]:
        """modality -> the views training needs (always at least the clean one)."""
        needed: dict[str, list[str]] = {m: [] for m in self.recipe.modalities}
        for _, _, spec in self.objectives:
            for modality, view in spec.inputs():
                if view not in needed[modality]:
                    needed[modality].append(view)
        return {m: v or [CLEAN] for m, v in needed.items()}


def _named(entry: dict[str, Any], key: str, registry: Any, path: str, errors: list[tuple[str, str]]) -> tuple[Any, Any]:
    if key not in entry:
        errors.append((path, f"missing `{key}` (one of: {', '.join(registry.names())})"))
        return None, None
    try:
        kind = registry.get(str(entry[key]))
    except RegistryError as err:
        errors.append((f"{path}.{key}", str(err)))
        return None, None
    body = entry if key == "name" else {k: v for k, v in entry.items() if k != key}
    try:
        return kind, kind.options.model_validate(body)
    except ValidationError as err:
        errors.extend(pydantic_errors(err, path))
        return kind, None


def _released_problems(spec: Any, plugin: ModalityPlugin, base_dir: Path, path: str) -> list[tuple[str, str]]:
    """What can be checked of a released encoder without loading it: the plugin can feed it, the path exists."""
    if plugin.adopt is None:
        return [(path, f"modality plugin {plugin.name!r} cannot feed released encoders (it has no `adopt`)")]
    if spec.path is None:
        return []
    try:
        resolved = resolve_path(spec.path, base_dir)
    except ReleasedError as err:
        return [(f"{path}.path", str(err))]
    local = spec.library != "transformers" or is_local_path(spec.path)
    if local and not Path(resolved).exists():
        return [(f"{path}.path", f"{resolved} does not exist")]
    return []


UNTRUSTED = (
    "not imported: the recipe names plugin files ({files}), which run code like a pickle; pass --trust-plugins "
    "if you trust where this run folder came from (or install the plugin as an entry point)"
)


def validate_plugin_sections(recipe: Recipe, source: str = "<recipe>", trust_plugins: bool = True) -> Plan:
    """Second validation pass: plugin options, sources, objectives, evaluations, capabilities.

    Args:
        trust_plugins: Import the plugin files the recipe names (``plugins:``). Commands reading a run folder pass
            False unless the user consents; modalities installed as entry points work either way.
    """
    errors: list[tuple[str, str]] = []
    plan = Plan(recipe)
    try:
        load_entry_points()
        for i, file in enumerate(recipe.plugins if trust_plugins else []):
            try:
                load_plugin_file(file, recipe.base_dir)
            except PluginError as err:
                errors.append((f"plugins[{i}]", str(err)))
    except PluginError as err:
        errors.append(("(plugins)", str(err)))
    for name, spec in recipe.modalities.items():
        path = f"modalities.{name}"
        try:
            plugin = get_modality(recipe.plugin_of(name))
        except (RegistryError, PluginError) as err:
            untrusted = not trust_plugins and recipe.plugins
            message = UNTRUSTED.format(files=", ".join(recipe.plugins)) if untrusted else str(err)
            errors.append((f"{path}.plugin", message))
            continue
        plan.plugins[name] = plugin
        try:
            plan.modality_options[name] = plugin.parse_options(spec.options)
        except ValidationError as err:
            errors.extend(pydantic_errors(err, f"{path}.options"))
        if spec.encoder is not None:
            errors.extend(_released_problems(spec.encoder, plugin, recipe.base_dir, f"{path}.encoder"))
    for split, entry in recipe.data.items():
        kind, options = _named(entry, "source", SOURCES, f"data.{split}", errors)
        if options is not None:
            plan.sources[split] = (kind, options)
    labels: dict[str, int] = {}
    for i, entry in enumerate(recipe.objectives):
        kind, options = _named(entry, "name", OBJECTIVES, f"objectives[{i}]", errors)
        if options is None:
            continue
        base = kind.name
        labels[base] = labels.get(base, 0) + 1
        label = base if labels[base] == 1 else f"{base}{labels[base]}"
        caps = {m: p.capabilities for m, p in plan.plugins.items()}
        names = {m: p.name for m, p in plan.plugins.items()}
        for problem in objective_requirements_error(options, caps, names, set(recipe.modalities)):
            errors.append((f"objectives[{i}]", problem))
        plan.objectives.append((label, kind, options))
    for i, entry in enumerate(recipe.evaluations):
        kind, options = _named(entry, "name", EVALUATORS, f"evaluations[{i}]", errors)
        if options is None:
            continue
        for split in kind.splits(options):
            if split not in recipe.data:
                errors.append(
                    (f"evaluations[{i}]", f"names data split {split!r}, not in `data` ({sorted(recipe.data)})")
                )
        for modality in kind.modalities(options):
            if modality not in recipe.modalities:
                errors.append((f"evaluations[{i}]", f"names modality {modality!r}, not in `modalities`"))
        plan.evaluations.append((kind, options))
    if errors:
        raise RecipeError(source, errors)
    return plan


def _load_raw(plan: Plan, split: str) -> Source:
    kind, options = plan.sources[split]
    return kind.load(options, plan.recipe.base_dir)


def label_space(plan: Plan, loaded: dict[str, Source] | None = None) -> LabelSpace:
    """The plan's label space, resolved over every split the first time (``loaded``: splits already read)."""
    if plan.labels is None:
        loaded = dict(loaded or {})
        plan.labels = resolve_label_space({s: loaded.get(s) or _load_raw(plan, s) for s in plan.sources})
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


def prepare_released(plan: Plan) -> None:
    """Load each released encoder the recipe names (once) and let its plugin adopt the encoder's preprocessing.

    Raises:
        RecipeError: An encoder cannot be loaded or its plugin refuses its preprocessing; the key is named.
    """
    errors: list[tuple[str, str]] = []
    for modality, spec in plan.recipe.modalities.items():
        if spec.encoder is None or modality in plan.released:
            continue
        plugin = plan.plugins[modality]  # validation checked that it has `adopt`
        path = f"modalities.{modality}.encoder"
        try:
            released = load_released(spec.encoder, plan.recipe.base_dir)
            plan.modality_options[modality] = plugin.adopt(plan.modality_options[modality], released.preprocessing)
        except (ReleasedError, RegistryError, ValueError) as err:
            errors.append((path, str(err)))
            continue
        plan.released[modality] = released
    if errors:
        raise RecipeError("<recipe>", errors)


def build_processors(plan: Plan, train: Source, policy: DataErrorPolicy | None = None) -> dict[str, Processor]:
    """Fit each modality's processor on the training split's column.

    Under ``policy.skip`` a value the plugin cannot read while fitting is recorded (step 0) and left out: the
    plugin failed while reading the value it was last given, so that one is dropped and the fit starts over.
    """
    prepare_released(plan)
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
    prepare_released(plan)
    return {m: plugin.load_processor(plan.modality_options[m], directory / m) for m, plugin in plan.plugins.items()}


def build_encoder(plan: Plan, modality: str, processor: Processor) -> nn.Module:
    """The plugin's own encoder, or a fresh copy of the released one set up to train as the recipe asks."""
    spec = plan.recipe.modalities[modality].encoder
    if spec is None:
        plugin = plan.plugins[modality]
        return check_is_module(plugin.build_encoder(plan.modality_options[modality], processor), plugin.name)
    prepare_released(plan)
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
