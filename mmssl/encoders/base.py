"""What every released-encoder adapter returns, and the registry adapters register in."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from mmssl.modality import ModalityBatch
from mmssl.recipe import EncoderSpec
from mmssl.registry import Registry


class ReleasedError(ValueError):
    """A released encoder cannot be loaded or used as asked; the message names the path or key."""


def refuse_keep(batch: ModalityBatch, what: str) -> None:
    if batch.keep is not None:
        raise ReleasedError(
            f"{what} sees every token and cannot drop hidden ones (MAE-style `keep`); use an objective that "
            "replaces masked tokens (mlm), or the plugin's own encoder"
        )


def find_blocks(model: nn.Module, count: int) -> list[nn.Module]:
    """The first ``nn.ModuleList`` of ``count`` modules: the transformer blocks of most Hugging Face models."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module)
    return []


@dataclass
class Preprocessing:
    """What a released encoder expects of its inputs; the modality plugin adopts it (``ModalityPlugin.adopt``).

    Attributes:
        input: The kind of batch the encoder reads: token ids, pixels [B, C, H, W], waveforms [B, S] or
            log-mel spectrograms [B, n_mels, T].
        tokenizer: A folder with the encoder's ``tokenizer.json`` (text).
        max_length: The longest input the encoder's positions allow: tokens (text) or frames (AST audio).
        image_size: Side of the square input image, in pixels.
        patch_size: Side of a patch, when the encoder is a ViT (else None).
        mean: Per-channel (image) or single-value (audio) normalisation mean.
        std: Per-channel (image) or single-value (audio) normalisation std.
        sample_rate: Audio sample rate in Hz.
        n_mels: Mel bins of a spectrogram input.
    """

    input: Literal["tokens", "pixels", "waveform", "log_mel"]
    tokenizer: str | None = None
    max_length: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    sample_rate: int | None = None
    n_mels: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Released:
    """A loaded released encoder.

    Attributes:
        encoder: ``nn.Module`` with ``width`` mapping a ``ModalityBatch`` to an ``EncoderOutput``.
        preprocessing: What its inputs must look like.
        library: ``transformers``, ``open_clip`` or ``timm``.
        export: Library-specific facts an exporter needs (model name, config, tower, source folder, ...).

    The encoder also has ``layer_stack() -> (stem, blocks)``: the modules before the first block and the blocks
    in input-to-output order (layer-wise lr decay, unfreezing the last blocks).
    """

    encoder: nn.Module
    preprocessing: Preprocessing
    library: str
    export: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderLibrary:
    """A library whose released encoders mmssl can train (``modalities.<m>.encoder.library``).

    Attributes:
        name: Registry name (``transformers``, ``open_clip``, ``timm``, ...).
        options: The library's options model (``mmssl.recipe.EncoderSpec`` plus its own fields, extra keys refused).
        load: ``(options, base_dir) -> Released``: builds the encoder the options name.
        drops_tokens: Its encoders accept ``ModalityBatch.keep`` (visible-only masking, MAE-style).
        exposes_layers: Its encoders offer ``layer_stack()`` (layer-wise lr decay, unfreezing the last blocks).
        hub_ids: ``path`` may be a hub id rather than a local file.
    """

    name: str
    options: type[EncoderSpec]
    load: Callable[[Any, Path], Released]
    drops_tokens: bool = False
    exposes_layers: bool = True
    hub_ids: bool = False


ENCODER_LIBRARIES: Registry[EncoderLibrary] = Registry(
    "encoder library", group="mmssl.encoder_libraries", builtins=("mmssl.encoders",)
)


def register_encoder_library(
    name: str,
    options: type[EncoderSpec],
    *,
    drops_tokens: bool = False,
    exposes_layers: bool = True,
    hub_ids: bool = False,
) -> Callable[[Callable[[Any, Path], Released]], Callable[[Any, Path], Released]]:
    """``@register_encoder_library("name", OptionsModel, ...)`` on an ``(options, base_dir) -> Released`` loader."""

    def wrap(load: Callable[[Any, Path], Released]) -> Callable[[Any, Path], Released]:
        library = EncoderLibrary(name, options, load, drops_tokens, exposes_layers, hub_ids)
        ENCODER_LIBRARIES.register(name, library)
        return load

    return wrap


def is_local_path(path: str) -> bool:
    """True for paths that name a file or folder on this machine (never a hub id)."""
    return path.startswith((".", "/", "~", "package:"))


def resolve_path(path: str, base_dir: Path) -> str:
    """Resolve ``package:NAME[/sub]`` to a folder of an installed package, and relative paths against ``base_dir``.

    A string that is neither an existing path nor a package reference is returned unchanged (a hub id).
    The package is located without being imported.
    """
    if path.startswith("package:"):
        name, _, sub = path.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ReleasedError(
                f"encoder.path {path!r}: Python package {name!r} is not installed (pip install it first)"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not folder.exists():
            raise ReleasedError(f"encoder.path {path!r}: {folder} does not exist")
        return str(folder)
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return str(candidate) if candidate.exists() or is_local_path(path) else path


def load_released(spec: EncoderSpec, base_dir: Path) -> Released:
    """Load the encoder a recipe's ``EncoderSpec`` names (validated against its library's options model first)."""
    library = ENCODER_LIBRARIES.get(spec.library)
    options = spec if isinstance(spec, library.options) else library.options.model_validate(spec.model_dump())
    return library.load(options, base_dir)
