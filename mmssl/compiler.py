"""The one recipe compiler: YAML (or a dict) -> a frozen, validated :class:`Plan` that every command runs.

``compile_recipe`` reads the file, applies ``key=value`` overrides, validates the fixed sections, loads the plugin
files the recipe names, validates every plugin-owned section (modality, source, objective and evaluation
options) against the model its registered component supplies, checks what each objective needs of each
modality and of each released encoder, and (unless ``weights=False``) loads the released encoders and lets each
plugin adopt its encoder's preprocessing. Every error names its key path; all errors of one recipe are reported
together. ``mmssl validate`` is this compiler with ``weights=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from mmssl.batch import CLEAN
from mmssl.data.labels import LabelSpace
from mmssl.data.sources import SOURCES, SourceType
from mmssl.encoders.base import (
    ENCODER_LIBRARIES,
    EncoderLibrary,
    Released,
    ReleasedError,
    is_local_path,
    resolve_path,
)
from mmssl.eval.base import EVALUATORS, EvaluatorType
from mmssl.eval.needs import evaluation_needs_errors
from mmssl.modality import ModalityPlugin
from mmssl.objectives.base import OBJECTIVES, ObjectiveOptions, ObjectiveType, objective_requirements_error
from mmssl.plugins import MODALITIES, PluginError, load_plugin_file
from mmssl.recipe import EncoderSpec, Recipe, RecipeError, apply_overrides, load_yaml, parse_recipe, pydantic_errors
from mmssl.registry import Registry, RegistryError


@dataclass(frozen=True)
class Plan:
    """A compiled recipe: the typed recipe plus every component it names, resolved and validated.

    Attributes:
        recipe: The validated recipe (its ``base_dir`` set).
        source: Where it came from (a file path or a label), for error messages.
        plugins: modality -> its modality plugin.
        modality_options: modality -> the plugin's options, after ``adopt`` when a released encoder is used.
        sources: split -> (source type, its options).
        objectives: (label, objective type, options) in recipe order; labels are unique (``clip``, ``clip2``).
        evaluations: (evaluator type, options) in recipe order.
        libraries: modality -> the encoder library of its released encoder (only modalities that have one).
        released: modality -> the loaded released encoder (empty when compiled with ``weights=False``).
    """

    recipe: Recipe
    source: str = "<recipe>"
    plugins: Mapping[str, ModalityPlugin[Any]] = field(default_factory=dict)
    modality_options: Mapping[str, BaseModel] = field(default_factory=dict)
    sources: Mapping[str, tuple[SourceType, BaseModel]] = field(default_factory=dict)
    objectives: tuple[tuple[str, ObjectiveType, ObjectiveOptions], ...] = ()
    evaluations: tuple[tuple[EvaluatorType, BaseModel], ...] = ()
    libraries: Mapping[str, EncoderLibrary] = field(default_factory=dict)
    released: Mapping[str, Released] = field(default_factory=dict)
    _labels: list[LabelSpace] = field(default_factory=list, repr=False, compare=False)

    @property
    def labels(self) -> LabelSpace | None:
        """The run's one label space (``labels.json`` of a run folder), once resolved from the data
        (``build.label_space``) or read back; it comes from the data, not from the recipe, so it is set later."""
        return self._labels[0] if self._labels else None

    def set_labels(self, space: LabelSpace) -> None:
        self._labels[:] = [space]

    def views(self) -> dict[str, list[str]]:
        """modality -> the views training needs (always at least the clean one)."""
        needed: dict[str, list[str]] = {m: [] for m in self.recipe.modalities}
        for _, _, spec in self.objectives:
            for modality, view in spec.inputs():
                if view not in needed[modality]:
                    needed[modality].append(view)
        return {m: v or [CLEAN] for m, v in needed.items()}

    def encoder_spec(self, modality: str) -> EncoderSpec | None:
        """The recipe's released-encoder section of ``modality`` (None: the plugin's own encoder)."""
        return self.recipe.modalities[modality].encoder


def compile_recipe(
    recipe: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    base_dir: Path | None = None,
    source: str | None = None,
    weights: bool | Collection[str] = True,
    trust_plugins: bool = True,
    before_plugins: Callable[[Recipe], None] | None = None,
    check_evaluation_data: bool = True,
) -> Plan:
    """Compile a recipe file or tree into a frozen :class:`Plan`.

    Args:
        recipe: A YAML file, or a recipe tree (a dict as the YAML would give).
        overrides: ``key.path=value`` overrides, applied before validation.
        base_dir: Folder relative paths are resolved against (default: the file's folder, or ``.``).
        source: Name used in error messages (default: the file path).
        weights: Load released encoders (True), none (False: ``mmssl validate``), or only those of the named
            modalities (``mmssl finetune`` of one modality).
        trust_plugins: Import the plugin files the recipe names (``plugins:``; they run code). Commands reading a
            run folder pass False unless the user consents; modalities installed as entry points work either way.
        before_plugins: Called with the parsed recipe before any plugin file is imported (a run folder checks
            the files' recorded hashes).
        check_evaluation_data: Also check what each evaluation needs of its data (labels, class names), peeking
            at the splits that can be read cheaply (``mmssl.eval.needs``).

    Raises:
        RecipeError: Every problem found, each with its key path.
        FileNotFoundError: The recipe file does not exist.
    """
    if isinstance(recipe, Mapping):
        tree = dict(recipe)
        source = source or "<recipe>"
        base = base_dir or Path(".")
    else:
        tree = load_yaml(recipe)
        source = source or str(recipe)
        base = base_dir or Path(recipe).resolve().parent
    try:
        tree = apply_overrides(tree, list(overrides))
    except (KeyError, ValueError) as err:
        raise RecipeError(source, [("(overrides)", str(err.args[0]) if err.args else str(err))]) from None
    parsed = parse_recipe(tree, source, base)
    if before_plugins is not None:
        before_plugins(parsed)
    load = set(parsed.modalities) if weights is True else set() if weights is False else set(weights)
    plan = _Compiler(parsed, source, trust_plugins).compile(load)
    if check_evaluation_data:
        problems = evaluation_needs_errors(plan)
        if problems:
            raise RecipeError(source, problems)
    return plan


UNTRUSTED = (
    "not imported: the recipe names plugin files ({files}), which run code like a pickle; pass --trust-plugins "
    "if you trust where this run folder came from (or install the plugin as an entry point)"
)


class _Compiler:
    """Collects every error of one recipe while resolving its components."""

    def __init__(self, recipe: Recipe, source: str, trust_plugins: bool = True) -> None:
        self.recipe, self.source, self.trust_plugins = recipe, source, trust_plugins
        self.errors: list[tuple[str, str]] = []

    def compile(self, load_weights: set[str]) -> Plan:
        self._load_plugin_files()
        plugins, options = self._modalities()
        libraries = self._libraries(plugins)
        sources = {
            split: found
            for split, entry in self.recipe.data.splits.items()
            if (found := self._named(entry, "source", SOURCES, f"data.{split}")) is not None
        }
        objectives = self._objectives(plugins, libraries)
        evaluations = self._evaluations()
        if self.errors:
            raise RecipeError(self.source, self.errors)
        chosen = {m: library for m, library in libraries.items() if m in load_weights}
        released = self._load_released(plugins, options, chosen)
        return Plan(
            recipe=self.recipe,
            source=self.source,
            plugins=MappingProxyType(plugins),
            modality_options=MappingProxyType(options),
            sources=MappingProxyType(sources),
            objectives=tuple(objectives),
            evaluations=tuple(evaluations),
            libraries=MappingProxyType(libraries),
            released=MappingProxyType(released),
        )

    def _load_plugin_files(self) -> None:
        MODALITIES.load()
        for i, file in enumerate(self.recipe.plugins if self.trust_plugins else []):
            try:
                load_plugin_file(file, self.recipe.base_dir)
            except PluginError as err:
                self.errors.append((f"plugins[{i}]", str(err)))

    def _modalities(self) -> tuple[dict[str, ModalityPlugin[Any]], dict[str, BaseModel]]:
        plugins: dict[str, ModalityPlugin[Any]] = {}
        options: dict[str, BaseModel] = {}
        for name, spec in self.recipe.modalities.items():
            path = f"modalities.{name}"
            try:
                plugin = MODALITIES.get(self.recipe.plugin_of(name))
            except RegistryError as err:
                untrusted = not self.trust_plugins and self.recipe.plugins
                message = UNTRUSTED.format(files=", ".join(self.recipe.plugins)) if untrusted else str(err)
                self.errors.append((f"{path}.plugin", message))
                continue
            plugins[name] = plugin
            try:
                options[name] = plugin.parse_options(spec.options)
            except ValidationError as err:
                self.errors.extend(pydantic_errors(err, f"{path}.options", plugin.options))
        return plugins, options

    def _libraries(self, plugins: dict[str, ModalityPlugin[Any]]) -> dict[str, EncoderLibrary]:
        """The encoder library of each released encoder; its section validated against the library's options model,
        and what can be checked without loading it."""
        libraries: dict[str, EncoderLibrary] = {}
        specs: dict[str, EncoderSpec] = {}
        for modality, spec in self.recipe.modalities.items():
            encoder = spec.encoder
            if encoder is None or modality not in plugins:
                continue
            path = f"modalities.{modality}.encoder"
            try:
                library = ENCODER_LIBRARIES.get(encoder.library)
            except RegistryError as err:
                self.errors.append((f"{path}.library", str(err)))
                continue
            try:
                typed = library.options.model_validate(encoder.model_dump())
            except ValidationError as err:
                self.errors.extend(pydantic_errors(err, path, library.options))
                continue
            libraries[modality] = library
            specs[modality] = typed
            if plugins[modality].adopt is None:
                self.errors.append(
                    (
                        path,
                        f"modality plugin {plugins[modality].name!r} cannot feed released encoders (it has no `adopt`)",
                    )
                )
            if self.recipe.train.layer_decay is not None and not library.exposes_layers:
                self.errors.append(
                    ("train.layer_decay", f"encoder library {library.name!r} ({path}) does not expose its layers")
                )
            self.errors.extend(self._path_problems(typed, path))
        # From here on each encoder section is its library's own options model.
        self.recipe = self.recipe.model_copy(
            update={
                "modalities": {
                    m: s.model_copy(update={"encoder": specs[m]}) if m in specs else s
                    for m, s in self.recipe.modalities.items()
                }
            }
        )
        return libraries

    def _path_problems(self, spec: EncoderSpec, path: str) -> list[tuple[str, str]]:
        if spec.path is None:
            return []
        try:
            resolved = resolve_path(spec.path, self.recipe.base_dir)
        except ReleasedError as err:
            return [(f"{path}.path", str(err))]
        local = not ENCODER_LIBRARIES.get(spec.library).hub_ids or is_local_path(spec.path)
        if local and not Path(resolved).exists():
            return [(f"{path}.path", f"{resolved} does not exist")]
        return []

    def _named(
        self, entry: dict[str, Any], key: str, registry: Registry[Any], path: str
    ) -> tuple[Any, BaseModel] | None:
        """Resolve ``entry[key]`` in ``registry`` and validate the rest of ``entry`` against its options."""
        if key not in entry:
            self.errors.append((path, f"missing `{key}` (one of: {', '.join(registry.names())})"))
            return None
        try:
            kind = registry.get(str(entry[key]))
        except RegistryError as err:
            self.errors.append((f"{path}.{key}", str(err)))
            return None
        body = entry if key == "name" else {k: v for k, v in entry.items() if k != key}
        try:
            return kind, kind.options.model_validate(body)
        except ValidationError as err:
            self.errors.extend(pydantic_errors(err, path, kind.options))
            return None

    def _objectives(
        self, plugins: dict[str, ModalityPlugin[Any]], libraries: dict[str, EncoderLibrary]
    ) -> list[tuple[str, ObjectiveType, ObjectiveOptions]]:
        out: list[tuple[str, ObjectiveType, ObjectiveOptions]] = []
        labels: dict[str, int] = {}
        caps = {m: p.capabilities for m, p in plugins.items()}
        names = {m: p.name for m, p in plugins.items()}
        for i, entry in enumerate(self.recipe.objectives):
            found = self._named(entry, "name", OBJECTIVES, f"objectives[{i}]")
            if found is None:
                continue
            kind, options = found
            assert isinstance(options, ObjectiveOptions)
            labels[kind.name] = labels.get(kind.name, 0) + 1
            label = kind.name if labels[kind.name] == 1 else f"{kind.name}{labels[kind.name]}"
            for problem in objective_requirements_error(options, caps, names, set(self.recipe.modalities)):
                self.errors.append((f"objectives[{i}]", problem))
            for modality, need in options.requirements():
                library = libraries.get(modality)
                if (
                    library is not None
                    and need.startswith("masking")
                    and caps[modality].drops_tokens
                    and not library.drops_tokens
                ):
                    self.errors.append(
                        (
                            f"objectives[{i}]",
                            f"objective {options.name!r} masks modality {modality!r} by dropping tokens, but its "
                            f"released encoder (modalities.{modality}.encoder, library {library.name!r}) sees every "
                            "token and cannot drop hidden ones; use an objective that replaces masked tokens (mlm), "
                            "or the plugin's own encoder",
                        )
                    )
            out.append((label, kind, options))
        return out

    def _evaluations(self) -> list[tuple[EvaluatorType, BaseModel]]:
        out: list[tuple[EvaluatorType, BaseModel]] = []
        for i, entry in enumerate(self.recipe.evaluations):
            found = self._named(entry, "name", EVALUATORS, f"evaluations[{i}]")
            if found is None:
                continue
            kind, options = found
            for split in kind.splits(options):
                if split not in self.recipe.data:
                    self.errors.append(
                        (f"evaluations[{i}]", f"names data split {split!r}, not in `data` ({sorted(self.recipe.data)})")
                    )
            for modality in kind.modalities(options):
                if modality not in self.recipe.modalities:
                    self.errors.append((f"evaluations[{i}]", f"names modality {modality!r}, not in `modalities`"))
            out.append((kind, options))
        return out

    def _load_released(
        self,
        plugins: dict[str, ModalityPlugin[Any]],
        options: dict[str, BaseModel],
        libraries: dict[str, EncoderLibrary],
    ) -> dict[str, Released]:
        """Load each released encoder once and let its plugin adopt the encoder's preprocessing (once)."""
        released: dict[str, Released] = {}
        for modality, library in libraries.items():
            spec = self.recipe.modalities[modality].encoder
            adopt = plugins[modality].adopt
            assert spec is not None and adopt is not None  # checked in _libraries
            try:
                loaded = library.load(spec, self.recipe.base_dir)
                # A random-init architecture without a source folder reads the plugin's own preprocessing.
                if spec.init == "released" or spec.path is not None:
                    options[modality] = adopt(options[modality], loaded.preprocessing)
            except (ReleasedError, RegistryError, ValueError) as err:
                self.errors.append((f"modalities.{modality}.encoder", str(err)))
                continue
            released[modality] = loaded
        if self.errors:
            raise RecipeError(self.source, self.errors)
        return released
