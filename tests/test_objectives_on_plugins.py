"""Every registered objective on every registered modality plugin, driven by the two registries.

The cases are built at collection time from ``mmssl.plugins.all_modalities()`` and ``mmssl.objectives.OBJECTIVES``,
so a new plugin (first-party, third-party through the ``mmssl.modalities`` entry point) and a new objective are
tested by this suite without editing it, except for one thing: a plugin needs a row in ``FIXTURES`` saying which
tiny real data it trains on. A registered plugin without a row fails ``test_every_plugin_has_a_data_fixture`` (and
its training cases) with "add a tiny data fixture for plugin X"; it is never skipped.

For each (plugin, objective):

- the plugin offers every capability the objective asks of it (``ObjectiveOptions.requirements``: ``views``,
  ``masking``, ``masking:continuous``, ``masking:categorical``, ``pairing``; checked here by the test's own reading
  of ``Capabilities``, not by the code under test): the recipe trains 2 optimizer steps through
  ``mmssl.train.trainer.train`` on the fixture's rows; every logged loss is finite and the plugin's encoder weights
  moved from their initial values.
- it lacks one: validating the recipe fails, naming the objective, the plugin and the missing capability.

Objective options are built from the options model's fields: ``modality`` gets the plugin's key, ``modalities``
(pair objectives: CLIP, SigLIP) gets ``[plugin, partner]``; head widths are shrunk (``TINY_OPTIONS``). A required
field the test cannot fill fails with a message saying so.

Pair objectives need a second modality on the same rows. They train where a fixture names a partner:
image-text (Fashion-MNIST images and their captions), text-image (the same rows) and audio-text (Asterisk prompts
and their transcripts). Time series (GunPoint) and graphs (NCI SMILES) have no paired data here; their pair cases
are reported as skipped with that reason (add a ``partner`` to the fixture row to run them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

import mmssl.train.trainer as trainer
from mmssl.compiler import compile_recipe
from mmssl.modality import Capabilities
from mmssl.objectives import OBJECTIVES
from mmssl.objectives.base import ObjectiveType
from mmssl.plugins import all_modalities
from mmssl.recipe import RecipeError

STEPS = 2

# ----------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Partner:
    """A second modality on the same rows, for pair objectives: its plugin, its column, and its options
    (None: the options of that plugin's own fixture row)."""

    plugin: str
    column: str
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class DataFixture:
    """Tiny real data for one plugin.

    Attributes:
        data: The ``data.train`` entry of a recipe (a few dozen rows), or a function ``(tmp_path) -> entry`` that
            writes its data first (e.g. a manifest).
        column: The column holding the plugin's raw values.
        options: Tiny plugin options (``modalities.<plugin>.options``).
        batch_size: Rows per step (at most the number of rows).
        partner: The modality pair objectives align this one with; None: pair objectives are not run.
    """

    data: dict[str, Any] | Callable[[Path], dict[str, Any]]
    column: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    partner: Partner | None = None


def spectra_manifest(tmp_path: Path) -> dict[str, Any]:
    """Synthetic spectra (sums of Gaussian peaks at class-dependent positions) for the example ``spectra`` plugin."""
    from synthetic_spectra import write_manifest

    manifest = write_manifest(tmp_path / "spectra", rows=48)
    return {"source": "manifest", "path": str(manifest), "path_columns": ["spectrum"], "label_column": "label"}


IMAGE = {"image_size": 28, "patch_size": 7, "channels": 1, "width": 32, "depth": 1, "heads": 2, "stats_samples": 64}
TEXT = {"vocab_size": 64, "max_length": 12, "width": 32, "depth": 1, "heads": 2}
FASHION = {"source": "fashion_mnist", "split": "train", "limit": 64}

FIXTURES: dict[str, DataFixture] = {
    "image": DataFixture(FASHION, "image", IMAGE, partner=Partner("text", "caption")),
    "text": DataFixture(FASHION, "caption", TEXT, partner=Partner("image", "image")),
    "audio": DataFixture(
        {"source": "asterisk_prompts", "split": "train", "limit": 32},
        "audio",
        {
            "sample_rate": 8000,
            "n_mels": 32,
            "max_seconds": 1.0,
            "patch_freq": 16,
            "patch_time": 16,
            "width": 32,
            "depth": 1,
            "heads": 2,
            "stats_samples": 32,
            "time_mask": 8,
            "freq_mask": 4,
        },
        partner=Partner("text", "text"),
    ),
    "timeseries": DataFixture(
        {"source": "ucr_uea", "name": "GunPoint", "split": "train"},
        "series",
        {"channels": 1, "max_length": 150, "patch_len": 10, "width": 32, "depth": 1, "heads": 2},
    ),
    "graph": DataFixture({"source": "smiles_file", "limit": 64}, "smiles", {"width": 32, "layers": 2}),
    # The example third-party plugin (examples/plugin_spectra); registered only where it is installed.
    "spectra": DataFixture(spectra_manifest, "spectrum", {"max_length": 128, "patch_len": 16, "width": 32, "depth": 1}),
}

# Head sizes of the objectives, shrunk for speed; a field is set only if the objective has it, and never above its
# own default (so e.g. MLM keeps its linear head, decoder_depth 0).
TINY_OPTIONS: dict[str, int] = {
    "proj_dim": 16,
    "hidden_dim": 32,
    "pred_hidden_dim": 32,
    "out_dim": 64,
    "bottleneck_dim": 16,
    "decoder_width": 16,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "num_masks": 2,
}


@dataclass(frozen=True)
class Limit:
    """A known limitation of one (plugin, objective) pair: the options the suite trains it with instead, why, and
    the exception the default options raise (checked by ``test_known_limitation_still_holds``)."""

    options: dict[str, Any]
    reason: str
    raises: type[Exception]


KNOWN_LIMITS: dict[tuple[str, str], Limit] = {}

# --------------------------------------------------------------------------------- registry-driven cases

PLUGINS: dict[str, Capabilities] = {p.name: p.capabilities for p in all_modalities()}


def meets(caps: Capabilities, need: str) -> bool:
    """The test's own reading of a requirement (``kind`` or ``kind:detail``) against a plugin's capabilities."""
    kind, _, detail = need.partition(":")
    if kind == "views":
        return caps.views
    if kind == "pairing":
        return caps.pairing
    if kind == "masking":
        return caps.masking is not None and detail in ("", caps.masking)
    raise AssertionError(f"unknown capability {need!r}: teach meets() in {Path(__file__).name} about it")


def is_pair(objective: ObjectiveType) -> bool:
    return "modalities" in objective.options.model_fields


def partner_of(plugin: str) -> str:
    """The partner's modality key: the fixture's partner, or (for validation only) a second copy of the plugin."""
    fixture = FIXTURES.get(plugin)
    if fixture is not None and fixture.partner is not None:
        return fixture.partner.plugin
    return f"{plugin}_b"


def objective_entry(objective: ObjectiveType, plugin: str, limits: bool = True) -> dict[str, Any]:
    """The recipe entry asking ``objective`` of ``plugin``, filled from the options model's fields (and, with
    ``limits``, the options of its ``KNOWN_LIMITS`` entry)."""
    entry: dict[str, Any] = {"name": objective.name}
    for name, info in objective.options.model_fields.items():
        if name in ("name", "weight"):
            continue
        if name == "modality":
            entry[name] = plugin
        elif name == "modalities":
            entry[name] = [plugin, partner_of(plugin)]
        elif name in TINY_OPTIONS:
            default = info.get_default(call_default_factory=True)
            entry[name] = TINY_OPTIONS[name] if default is None else min(default, TINY_OPTIONS[name])
        elif info.is_required():
            pytest.fail(
                f"objective {objective.name!r} has a required option {name!r} that {Path(__file__).name} cannot "
                "fill: teach objective_entry() about it"
            )
    limit = KNOWN_LIMITS.get((plugin, objective.name))
    if limits and limit is not None:
        entry.update(limit.options)
    return entry


def unmet(objective: ObjectiveType, plugin: str) -> list[str]:
    """The capabilities ``objective`` asks of ``plugin`` that it does not offer."""
    spec = objective.options.model_validate(objective_entry(objective, plugin))
    return [need for modality, need in spec.requirements() if modality == plugin and not meets(PLUGINS[plugin], need)]


CASES = [(plugin, name) for plugin in PLUGINS for name, _ in OBJECTIVES.items()]
TRAINED = [(p, o) for p, o in CASES if not unmet(OBJECTIVES.get(o), p)]
REJECTED = [(p, o) for p, o in CASES if unmet(OBJECTIVES.get(o), p)]

# ------------------------------------------------------------------------------------------------ helpers


def modality_entry(plugin: str, column: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"plugin": plugin, "column": column, "options": dict(options)}


def fixture_of(plugin: str) -> DataFixture:
    if plugin not in FIXTURES:
        pytest.fail(
            f"add a tiny data fixture for plugin {plugin!r}: a DataFixture row in FIXTURES in {Path(__file__).name} "
            "(data source entry with a few dozen rows, column, tiny options; see docs/plugins.md)"
        )
    return FIXTURES[plugin]


def recipe_tree(
    plugin: str, objective: ObjectiveType, data: dict[str, Any], batch_size: int, limits: bool = True
) -> dict[str, Any]:
    fixture = FIXTURES.get(plugin)
    column, options = (fixture.column, fixture.options) if fixture else (plugin, {})
    modalities = {plugin: modality_entry(plugin, column, options)}
    if is_pair(objective):
        if fixture is not None and fixture.partner is not None:
            p = fixture.partner
            partner_options = p.options if p.options is not None else fixture_of(p.plugin).options
            modalities[p.plugin] = modality_entry(p.plugin, p.column, partner_options)
        else:  # validation only (training skips): a second modality of the same plugin
            modalities[partner_of(plugin)] = modality_entry(plugin, column, options)
    return {
        "name": f"{plugin}_{objective.name}",
        "seed": 0,
        "data": {"train": data},
        "modalities": modalities,
        "model": {"embed_dim": 16},
        "objectives": [objective_entry(objective, plugin, limits)],
        "train": {
            "steps": STEPS,
            "batch_size": batch_size,
            "lr": 1e-3,
            "log_every": 1,
            "checkpoint_every": 0,
            "num_workers": 0,
        },
    }


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1]}"


# -------------------------------------------------------------------------------------------------- tests


def test_the_registries_are_not_empty() -> None:
    assert {"image", "text", "audio", "timeseries", "graph"} <= set(PLUGINS)
    assert {"simclr", "clip", "siglip", "mae", "mlm"} <= set(OBJECTIVES.names())
    assert TRAINED and REJECTED
    for plugin in PLUGINS:  # every plugin trains something
        assert any(p == plugin for p, _ in TRAINED), plugin


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_every_plugin_has_a_data_fixture(plugin: str) -> None:
    fixture = fixture_of(plugin)
    if fixture.partner is not None:
        assert fixture.partner.plugin in PLUGINS, f"{plugin}'s partner plugin {fixture.partner.plugin!r} is missing"
        assert fixture.partner.plugin != plugin


def train_two_steps(
    plugin: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: bool = True
) -> None:
    """Train ``name`` on ``plugin``'s fixture for 2 steps; check finite losses and that the encoder moved."""
    objective = OBJECTIVES.get(name)
    fixture = fixture_of(plugin)
    if is_pair(objective) and fixture.partner is None:
        pytest.skip(f"no paired data for {plugin}: give its FIXTURES row a partner to run {name}")
    data = fixture.data(tmp_path) if callable(fixture.data) else fixture.data
    tree = recipe_tree(plugin, objective, data, fixture.batch_size, limits)
    plan = compile_recipe(tree, source=tree["name"], base_dir=tmp_path)

    initial: dict[str, torch.Tensor] = {}
    build_model = trainer.build_model

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = build_model(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in model.named_parameters()})
        return model

    monkeypatch.setattr(trainer, "build_model", spy)
    out = tmp_path / "run"
    result = trainer.train(plan, out)
    assert result.finished and result.step == STEPS

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        terms = {k: v for k, v in record.items() if k == "loss" or k.startswith(f"{name}/")}
        assert f"{name}/loss" in terms, sorted(record)
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        assert not bad, f"step {record['step']}: non-finite {bad}"

    final = load_file(str(out / "model.safetensors"))
    prefix = f"encoders.{plugin}."
    encoder = {k: v for k, v in initial.items() if k.startswith(prefix)}
    assert encoder, f"no parameters under {prefix}"
    changed = [k for k, v in encoder.items() if not torch.equal(v, final[k])]
    unchanged = sorted(set(encoder) - set(changed))
    assert len(changed) >= len(encoder) / 2, f"{name} on {plugin}: encoder weights that did not move: {unchanged}"


@pytest.mark.parametrize("case", TRAINED, ids=case_id)
def test_objective_trains_on_plugin(case: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_two_steps(*case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", list(KNOWN_LIMITS), ids=case_id)
def test_known_limitation_still_holds(case: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the objective's default options the pair still fails as recorded; once fixed, drop its KNOWN_LIMITS
    entry (this test then fails, saying so)."""
    limit = KNOWN_LIMITS[case]
    if case[0] not in PLUGINS or case[1] not in OBJECTIVES:
        pytest.skip(f"{case} is not registered here")
    try:
        train_two_steps(*case, tmp_path, monkeypatch, limits=False)
    except limit.raises:
        return
    pytest.fail(f"{case_id(case)} trains with the default options now: remove its KNOWN_LIMITS entry ({limit.reason})")


@pytest.mark.parametrize("case", REJECTED, ids=case_id)
def test_objective_rejected_without_capability(case: tuple[str, str]) -> None:
    plugin, name = case
    objective = OBJECTIVES.get(name)
    missing = unmet(objective, plugin)
    # Validation reads no data: any source entry does.
    tree = recipe_tree(plugin, objective, {"source": "manifest", "path": "never-read.jsonl"}, 8)
    with pytest.raises(RecipeError) as err:
        compile_recipe(tree, source=tree["name"])
    message = str(err.value)
    assert "objectives[0]" in message, message
    for need in missing:
        assert need.replace(":", " ") in message, f"message does not name the capability {need!r}:\n{message}"
    assert repr(name) in message and repr(plugin) in message, message


def test_options_model_fields_drive_the_entries() -> None:
    """The entries are built from the options models, so they validate for every registered objective."""
    for plugin in PLUGINS:
        for name, objective in OBJECTIVES.items():
            spec = objective.options.model_validate(objective_entry(objective, plugin))
            assert isinstance(spec, BaseModel)
            assert any(m == plugin for m, _ in spec.inputs()), (plugin, name, spec.inputs())
