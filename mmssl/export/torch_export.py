"""The general route: any encoder of a run as a ``torch.export`` program, loadable with plain torch.

The folder holds ``embed.pt2`` (``torch.export.save`` of encoder + projection + L2 normalisation), ``inputs.json``
(the program's inputs in order: name, dtype, rank, what each holds) and ``preprocessing.json`` (the plugin's options
and fitted processor state: what turns a raw value into those tensors), plus ``example_inputs.safetensors``
(one collated batch) and ``README.md``. Without mmssl::

    program = torch.export.load("FOLDER/embed.pt2").module()
    embedding, pooled = program(*tensors)      # [B, E] unit norm (the shared space), [B, D] (the encoder)

The batch the plugin collates (``ModalityBatch``) is flattened to named tensors: a tensor ``data``; a dict
``data.<key>``; a PyTorch Geometric ``Batch`` ``data.<attribute>`` (its tensors: ``x``, ``edge_index``,
``batch``, ``ptr``, ...); and ``padding_mask`` (True at padding). Batch and length dimensions are exported dynamic
where the encoder allows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from mmssl.export.card import copy_report_figures, model_card
from mmssl.export.files import MARKER, write_folder
from mmssl.export.formats import register_export_format
from mmssl.export.own_transformer import NotExportable
from mmssl.modality import ModalityBatch

PROGRAM_FILE = "embed.pt2"


class Record(dict):
    """A dict of tensors read by attribute too (what an encoder reads from a PyG ``Batch``).

    ``num_graphs`` comes from ``ptr`` ([B + 1]), as in PyG's ``Batch``.
    """

    def __getattr__(self, name: str) -> Any:
        if name == "num_graphs" and "ptr" in self:
            return self["ptr"].shape[0] - 1
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


@dataclass(frozen=True)
class Layout:
    """How the batch data was flattened: ``kind`` ``tensor`` | ``dict`` | ``record``; the data keys, in order."""

    kind: str
    keys: tuple[str, ...]

    def names(self) -> list[str]:
        return ["data"] if self.kind == "tensor" else [f"data.{k}" for k in self.keys]


def flatten(data: Any) -> tuple[Layout, list[Tensor]]:
    """Split a batch's ``data`` into a layout and its tensors.

    Raises:
        NotExportable: ``data`` is of another kind.
    """
    if isinstance(data, Tensor):
        return Layout("tensor", ()), [data]
    if isinstance(data, dict):
        keys = tuple(k for k, v in data.items() if isinstance(v, Tensor))
        return Layout("dict", keys), [data[k] for k in keys]
    to_dict = getattr(data, "to_dict", None)
    if callable(to_dict):
        items = {k: v for k, v in to_dict().items() if isinstance(v, Tensor)}
        keys = tuple(sorted(items))
        return Layout("record", keys), [items[k] for k in keys]
    raise NotExportable(f"cannot flatten batch data of type {type(data).__name__} into tensors")


def rebuild(layout: Layout, tensors: tuple[Tensor, ...]) -> Any:
    if layout.kind == "tensor":
        return tensors[0]
    if layout.kind == "dict":
        return dict(zip(layout.keys, tensors, strict=True))
    return Record(zip(layout.keys, tensors, strict=True))


class EmbeddingProgram(nn.Module):
    """Encoder + projection + L2 normalisation over flattened batch tensors (what gets exported).

    Shapes:
        inputs: the layout's tensors, then padding_mask [B, N] bool -> (embedding [B, E] unit norm, pooled [B, D])
    """

    def __init__(self, encoder: nn.Module, projection: nn.Module, layout: Layout) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        self.layout = layout

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        *tensors, padding = inputs
        batch = ModalityBatch(rebuild(self.layout, tuple(tensors)), padding)
        pooled = self.encoder(batch).pooled
        return F.normalize(self.projection(pooled), dim=-1), pooled


def _describe(name: str, t: Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape_example": list(t.shape)}


def program_inputs(encoder: nn.Module, batch: ModalityBatch) -> tuple[Layout, tuple[Tensor, ...]]:
    """The program's inputs for one collated batch: the flattened data, then the padding mask.

    The padding mask is always an input (all False where the plugin gave None), so one program serves batches with
    and without padding.
    """
    layout, tensors = flatten(batch.data)
    padding = batch.padding_mask
    if padding is None:
        with torch.no_grad():
            tokens = encoder.eval()(batch).tokens
        padding = torch.zeros(tokens.shape[:2], dtype=torch.bool)
    return layout, (*tensors, padding)


def export_program(
    encoder: nn.Module, projection: nn.Module, batch: ModalityBatch
) -> tuple[Any, list[dict[str, Any]], tuple[Tensor, ...]]:
    """``torch.export`` the embedding of ``batch``-like inputs; returns the program, its inputs' description and
    the example inputs."""
    encoder, projection = encoder.eval(), projection.eval()
    layout, inputs = program_inputs(encoder, batch)
    program = EmbeddingProgram(encoder, projection, layout)
    dynamic = tuple({d: torch.export.Dim.AUTO for d in range(t.ndim)} for t in inputs)
    try:
        with torch.no_grad():
            exported = torch.export.export(program, inputs, dynamic_shapes=(dynamic,), strict=False)
    except Exception:  # an encoder that needs fixed lengths (e.g. caches keyed by shape): only the batch is dynamic
        batch_only = tuple({0: torch.export.Dim.AUTO} if t.ndim else {} for t in inputs)
        with torch.no_grad():
            exported = torch.export.export(program, inputs, dynamic_shapes=(batch_only,), strict=False)
    names = [*layout.names(), "padding_mask"]
    return exported, [_describe(n, t) for n, t in zip(names, inputs, strict=True)], inputs


def _preprocessing(run: Any, m: str) -> dict[str, Any]:
    processor = run.processors[m]
    state = processor.state() if callable(getattr(processor, "state", None)) else {}
    return {
        "plugin": run.plan.recipe.plugin_of(m),
        "options": run.plan.modality_options[m].model_dump(mode="json"),
        "processor_state": state,
        "steps": "decode -> prepare (the plugin's deterministic preprocessing) -> collate -> the inputs below",
    }


def _snippet(output: Path) -> str:
    return f"""import torch
from safetensors.torch import load_file

program = torch.export.load("{output}/{PROGRAM_FILE}").module()
inputs = load_file("{output}/example_inputs.safetensors")   # one collated batch; see inputs.json for the order
names = [entry["name"] for entry in __import__("json").load(open("{output}/inputs.json"))]
embedding, pooled = program(*[inputs[name] for name in names])  # [B, E] unit norm, [B, D]"""


@register_export_format("torch_export", per_modality=True)
def export_torch(run_dir: Path, output: Path, modality: str | None = None, trust_plugins: bool = False) -> Path:
    """Write the embedding program of ``modality`` (default: the run's only modality) with its preprocessing.

    Raises:
        NotExportable: Several modalities and no ``modality``, or an encoder torch.export cannot trace.
    """
    from mmssl.build import load_source
    from mmssl.data.dataset import is_missing
    from mmssl.run import load_run

    run_dir, output = Path(run_dir), Path(output)
    run = load_run(run_dir, trust_plugins=trust_plugins)
    names = sorted(run.model.encoders)
    if modality is None:
        if len(names) != 1:
            raise NotExportable(f"torch_export writes one modality; pick one of {names} with --modality")
        modality = names[0]
    if modality not in run.model.encoders:
        raise NotExportable(f"--modality {modality!r} is not in the run (has {names})")
    processor = run.processors[modality]
    split = next(iter(run.plan.recipe.data))
    column = run.plan.recipe.column_of(modality)
    values = [r[column] for r in load_source(run.plan, split).rows if not is_missing(r.get(column))][:4]
    batch = processor.collate([processor.prepare(processor.decode(v)) for v in values])
    try:
        program, described, inputs = export_program(
            run.model.encoders[modality], run.model.projections[modality], batch
        )
    except Exception as err:  # torch.export raises many kinds of tracing errors
        raise NotExportable(f"modality {modality!r}: torch.export could not trace the encoder: {err}") from err
    preprocessing = _preprocessing(run, modality)

    def fill(tmp: Path) -> None:
        torch.export.save(program, str(tmp / PROGRAM_FILE))
        (tmp / "inputs.json").write_text(json.dumps(described, indent=2) + "\n")
        (tmp / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
        save_file({d["name"]: t.contiguous() for d, t in zip(described, inputs, strict=True)},
                  str(tmp / "example_inputs.safetensors"))  # fmt: skip
        info = {"format": "torch_export", "modality": modality, "run": str(run_dir.resolve())}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        card = model_card(run.plan.recipe, "torch_export", {modality: preprocessing}, _snippet(output), run_dir)
        (tmp / "README.md").write_text(card)
        copy_report_figures(Path(run_dir), tmp)

    return write_folder(output, fill, MARKER)
