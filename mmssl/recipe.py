"""The recipe schema: a YAML file validated into typed sections before any compute.

Sections whose fields depend on a plugin (modality options, objective, source and evaluation options) are
validated in a second pass (:func:`mmssl.compiler.compile_recipe`) against the model each registered component
supplies, and every error names its key path, e.g. ``objectives[1].temprature: extra inputs are not permitted``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(Strict):
    """Low-rank adaptation through ``peft`` (``modalities.<m>.encoder.lora``)."""

    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="Scale of the update is alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        min_length=1, description="Names (or name suffixes) of the linear layers that get LoRA, e.g. [query, value]."
    )
    unfreeze_last_blocks: int = Field(
        0, ge=0, description="Also train the last N transformer blocks in full (ExPLoRA-style); 0 trains LoRA only."
    )


class EncoderSpec(BaseModel):
    """A released encoder to start from (``modalities.<m>.encoder``), instead of the plugin's own.

    The fields every library shares. Each encoder library owns an options model that extends this one with its
    own fields (``EncoderLibrary.options``, e.g. open_clip's ``model`` and ``tower``); the compiler validates the
    section against the model of the library it names, so the keys a library does not know are refused there.
    """

    model_config = ConfigDict(extra="allow")
    library: str = Field(
        description="Registered encoder library whose format to load (built in: transformers, open_clip, timm)."
    )
    path: str | None = Field(
        None,
        description=(
            "The encoder's weights: a folder, file or hub id, as its library reads them. `package:NAME[/sub/path]` "
            "names a folder inside an installed Python package. Relative paths are resolved against the recipe's "
            "folder."
        ),
    )
    pooling: Literal["default", "mean", "cls"] = Field(
        "default", description="Pooled embedding: the library's usual one (default), mean of tokens or first token."
    )
    train: Literal["full", "frozen", "lora"] = Field(
        "full", description="full: every weight trains; frozen: encoder fixed (LiT-style); lora: `lora` adapters."
    )
    lora: LoraSpec | None = None
    init: Literal["released", "random"] = Field(
        "released",
        description=(
            "released: load the weights of `path` / `pretrained`; random: the library's architecture trained from "
            "random initialisation (timm: `model` + `kwargs`, e.g. in_chans; transformers: the config and "
            "preprocessing files of `path`, or `kwargs.model_type`, with `kwargs` overriding config fields). Without "
            "`path` the plugin's own options set the input (image size, channels, normalisation fitted on the data, "
            "its trained tokenizer)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> EncoderSpec:
        if self.train == "lora" and self.lora is None:
            raise ValueError("train: lora needs a `lora` section (r, alpha, target_modules)")
        if self.train != "lora" and self.lora is not None:
            raise ValueError(f"`lora` is given but train is {self.train!r}; set train: lora")
        if self.init == "random" and self.train != "full":
            raise ValueError(f"init: random trains every weight; train: {self.train} fits released weights only")
        return self


class ModalitySpec(Strict):
    plugin: str | None = Field(None, description="Registered modality plugin; default: the modality's own key.")
    column: str | None = Field(None, description="Data column holding this modality; default: the modality's key.")
    options: dict[str, Any] = Field(default_factory=dict, description="The plugin's own options.")
    encoder: SerializeAsAny[EncoderSpec] | None = Field(
        None, description="Start from a released encoder instead of the plugin's own."
    )
    projection: Literal["linear", "identity"] = Field(
        "linear",
        description=(
            "Map from the encoder's pooled width to the shared space: a learned linear layer, or identity "
            "(the encoder already ends in the shared space, e.g. an open_clip tower; needs width == embed_dim)."
        ),
    )


class ModelSpec(Strict):
    embed_dim: int = Field(256, ge=1, description="Width of the shared embedding space all modalities project to.")


class FSDPSpec(Strict):
    """Options of ``train.strategy: fsdp`` (FSDP2 ``fully_shard``; see docs/distributed.md)."""

    reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after each block's forward (ZeRO-3); false keeps them (ZeRO-2)."
    )
    cpu_offload: bool = Field(
        False, description="Keep sharded parameters, gradients and optimizer state in CPU memory."
    )
    param_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Mixed-precision policy: dtype parameters are gathered in for compute (null: their own)."
    )
    reduce_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Mixed-precision policy: dtype gradients are reduced in (null: param_dtype)."
    )


class TrainSpec(Strict):
    steps: int = Field(ge=1, description="Optimizer steps.")
    batch_size: int = Field(ge=1, description="Rows per process per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="Warmup-stable-decay: share of steps spent decaying.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a share of the peak.")
    clip_grad: float | None = Field(1.0, gt=0, description="Max gradient norm; null disables clipping.")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="Mixed precision through Accelerate.")
    log_every: int = Field(10, ge=1)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description=(
            "Experiment trackers (through Accelerate), all local and offline: tensorboard (tb/), wandb (offline, "
            "wandb/), mlflow (file store mlruns/). The recipe is logged as parameters, eval.json as eval/* metrics."
        ),
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1)
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes that decode and augment the next batches while the step runs; "
        "null: chosen from the cores (mmssl.data.feed.default_workers). 0 loads in the training process.",
    )
    find_unused_parameters: bool = False
    monitor_every: int = Field(
        0, ge=0, description="Every N steps log label-free collapse monitors (RankMe, uniformity, std); 0: off."
    )
    monitor_rows: int = Field(512, ge=2, description="Held training rows (clean view) the monitors embed.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Data parallelism: ddp replicates the model, fsdp shards parameters and optimizer state."
    )
    fsdp: FSDPSpec = FSDPSpec()
    contrastive_chunk: int | None = Field(
        None,
        ge=1,
        description=(
            "Cached large-batch contrastive (GradCache): encode each micro-batch in chunks of this many rows, so "
            "memory follows the chunk while the loss sees the whole (gathered) batch. null: no chunking."
        ),
    )
    activation_checkpointing: bool | list[str] = Field(
        False, description="Recompute encoder blocks in the backward pass: true for every encoder, or modality names."
    )
    compile: bool = Field(False, description="torch.compile each encoder.")
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "Layer-wise learning-rate decay: block i of L gets lr * layer_decay ** (L - i), the input stem "
            "lr * layer_decay ** (L + 1); heads and projections the full lr. null: one lr for all."
        ),
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _unquoted_no(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``no`` (``precision: no``, ``train.precision=no``) as false: take it as "no"."""
        return "no" if value is False else value

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_within_steps(cls, warmup: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if steps is not None and warmup > steps:
            raise ValueError(f"warmup_steps ({warmup}) is larger than steps ({steps})")
        return warmup


class DataSpec(BaseModel):
    """``data``: named splits (``{source: NAME, ...options}``) and the policy for rows that cannot be read.

    Behaves as a mapping of split name -> source entry, so ``recipe.data["train"]``, ``"test" in recipe.data``
    and ``recipe.data.items()`` see the splits only.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)

    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description=(
            "A row whose file cannot be read or decoded: raise (stop with the file named) or skip (train on a "
            "replacement row chosen from the seed, epoch and row, count it in metrics.jsonl, list it in "
            "RUN/skipped.jsonl)."
        ),
    )
    max_errors: int = Field(
        100, ge=0, description="on_error: skip: stop once more than this many distinct rows could not be read."
    )

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        return dict(self.__pydantic_extra__ or {})

    def __getitem__(self, split: str) -> dict[str, Any]:
        return self.splits[split]

    def __contains__(self, split: object) -> bool:
        return split in self.splits

    def __iter__(self):  # type: ignore[override]  # iterate split names, like a dict
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)

    def keys(self):
        return self.splits.keys()

    def items(self):
        return self.splits.items()

    def get(self, split: str, default: Any = None) -> Any:
        return self.splits.get(split, default)


class Recipe(Strict):
    name: str
    description: str = ""
    seed: int = 0
    plugins: list[str] = Field(default_factory=list, description="Extra plugin files, relative to the recipe.")
    data: DataSpec = Field(
        description="Named splits ({source: NAME, ...}); `train` is required. Also `on_error` and `max_errors`."
    )
    modalities: dict[str, ModalitySpec]
    model: ModelSpec = ModelSpec()
    objectives: list[dict[str, Any]] = Field(min_length=1)
    train: TrainSpec
    evaluations: list[dict[str, Any]] = Field(default_factory=list)
    base_dir: Path = Field(Path("."), exclude=True, description="Folder relative paths are resolved against.")

    def plugin_of(self, modality: str) -> str:
        return self.modalities[modality].plugin or modality

    def column_of(self, modality: str) -> str:
        return self.modalities[modality].column or modality


class RecipeError(ValueError):
    """A recipe failed validation; ``errors`` lists ``(key path, message)``."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source, self.errors = source, errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: invalid recipe\n{lines}")


def format_loc(loc: tuple[Any, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def pydantic_errors(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """``(key path, message)`` per error; with the validated ``model``, an unknown key's message names the close
    matches and the allowed keys."""
    from mmssl.schema import model_at, unknown_key_message

    out = []
    for e in err.errors():
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            holder = model_at(model, tuple(e["loc"]))
            allowed = [k for k, f in holder.model_fields.items() if not f.exclude] if holder is not None else None
            if allowed:
                message = unknown_key_message(str(e["loc"][-1]), allowed)
            else:
                message = "unknown key (not allowed here)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict | list):
            message += f" (got {e['input']!r})"
        out.append((format_loc(tuple(e["loc"]), prefix), message))
    return out


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b[2].c``-style paths; list items are addressed as ``objectives.1.weight`` or ``objectives[1]``."""
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"override {dotted!r}: {'.'.join(parts[:i]) or 'top level'} has no item {part}")
            key: Any = int(part)
        else:
            if not isinstance(node, dict):
                raise KeyError(f"override {dotted!r}: {'.'.join(parts[:i])} is not a section")
            key = part
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``1e-3``, ``[a, b]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.load(value, Loader=UniqueKeyLoader)
        except yaml.YAMLError as err:
            reason = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ValueError(f"override {item!r}: the value is not valid YAML ({reason})") from None
        set_path(tree, key.strip(), parsed)
    return tree


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                message = f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one"
                raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"recipe {file} not found")
    try:
        tree = yaml.load(file.read_text(), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise RecipeError(str(file), [("(yaml)", str(err))]) from err
    if not isinstance(tree, dict):
        raise RecipeError(str(file), [("(top level)", "expected a mapping of sections")])
    return tree


def parse_recipe(tree: dict[str, Any], source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate the recipe's fixed sections (first pass)."""
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(source, pydantic_errors(err, model=Recipe)) from None
    recipe.base_dir = base_dir or Path(".")
    if "train" not in recipe.data:
        raise RecipeError(source, [("data", "a `train` split is required")])
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
