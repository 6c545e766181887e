"""Data sources: indexable collections of rows, each row a dict of column -> raw value.

A source is registered by name with a pydantic options model; recipes name it as ``{source: NAME, ...options}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from mmssl.data.labels import LabelError, is_missing_label, parse_label_column
from mmssl.registry import Registry, RegistryError


@dataclass
class Source:
    """Rows in memory (or lazily decodable references to files).

    Attributes:
        rows: Row dicts mapping column names to raw values (paths, arrays, strings, numbers).
        class_names: Names of the integer classes in the ``label`` column, when there is one.
        origin: Where the rows came from, for error messages.
        label_names: Set while the ``label`` column holds class names (text) not yet numbered: the sorted names
            this source holds. ``mmssl.build.load_source`` numbers them by the run's one label space.
        unlabelled: Rows without a label (kept for pretraining, left out of supervised evaluations).
    """

    rows: Sequence[dict[str, Any]]
    class_names: list[str] | None = None
    origin: str = ""
    columns: list[str] = field(default_factory=list)
    label_names: list[str] | None = None
    unlabelled: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]


@dataclass(frozen=True)
class SourceType:
    """A registered source.

    Attributes:
        peek: ``(options, base) -> Source | None``: the rows when reading them is cheap (an index or manifest, no
            decoding) and the data is there, for checks before training (labels, class names); else None.
    """

    name: str
    options: type[BaseModel]
    load: Callable[[Any, Path], Source]
    peek: Callable[[Any, Path], Source | None] | None = None


SOURCES: Registry[SourceType] = Registry(
    "data source", group="mmssl.sources", builtins=("mmssl.datasets", "mmssl.data.streaming")
)


def hash_share(name: str) -> float:
    """A deterministic number in [0, 1) from a name (SHA-1 of its UTF-8 bytes): a hash split puts the rows whose
    share is below the test fraction in the test split, independent of file order and of ``limit``."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def register_source(
    name: str, options: type[BaseModel], peek: Callable[[Any, Path], Source | None] | None = None
) -> Callable[[Callable[[Any, Path], Source]], Callable[[Any, Path], Source]]:
    def wrap(fn: Callable[[Any, Path], Source]) -> Callable[[Any, Path], Source]:
        SOURCES.register(name, SourceType(name, options, fn, peek))
        return fn

    return wrap


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=1, description="Use only the first `limit` rows.")


class ManifestOptions(SourceOptions):
    path: str = Field(description="A .jsonl, .csv or .parquet file with one row per example.")
    path_columns: list[str] = Field(
        default_factory=list, description="Columns holding file paths, resolved relative to the manifest's folder."
    )
    label_column: str | None = Field(
        None,
        description="Column with class labels: integers (class indices) or names (numbered over the union of all "
        "splits, sorted, unless `class_names` gives the order). Mixed names and integers are an error.",
    )
    class_names: list[str] | None = Field(
        None,
        description="The classes in index order: name labels are numbered by it (a name not in it is an error), "
        "integer labels index it.",
    )
    missing_labels: Literal["error", "unlabelled"] = Field(
        "error",
        description="A row without a label: `error`, or `unlabelled` (trained on, left out of supervised "
        "evaluations, counted in the run's labels.json).",
    )
    split_column: str | None = Field(None, description="Column naming each row's split (e.g. train / test).")
    split: str | int | None = Field(
        None,
        description="Keep only rows whose `split_column` equals this value; with `holdout`: `train` (the rows "
        "kept) or `test` (the rows held out).",
    )
    holdout: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="For a manifest without a split column: hold out this share of the rows, drawn per class "
        "(stratified by `label_column`, when there is one) with `holdout_seed`; `split` picks train or test.",
    )
    holdout_seed: int = Field(0, description="Seed of the `holdout` draw: the same seed gives the same split.")

    @model_validator(mode="after")
    def _split_pair(self) -> ManifestOptions:
        if self.holdout is not None:
            if self.split_column is not None or self.split not in ("train", "test"):
                raise ValueError("`holdout` needs `split: train` or `split: test` and no `split_column`")
        elif (self.split_column is None) != (self.split is None):
            raise ValueError("`split_column` and `split` go together: give both or neither")
        return self


def peek_manifest(options: ManifestOptions, base: Path) -> Source | None:
    """The manifest's rows when its file exists (paths are resolved, not read)."""
    file = Path(options.path)
    return load_manifest(options, base) if (file if file.is_absolute() else base / file).is_file() else None


def _column_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of any row, in first-seen order (a JSONL row may leave out a key another row has)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def read_manifest_rows(file: Path) -> list[dict[str, Any]]:
    """All rows of a .jsonl, .csv or .parquet manifest, as dicts.

    Raises:
        ValueError: A JSONL line that is not JSON (file and line named), or another file type.
    """
    if file.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{file}:{line_no}: not valid JSON ({err.msg})") from err
        return rows
    if file.suffix == ".csv":
        with file.open(newline="") as handle:
            return list(csv.DictReader(handle))
    if file.suffix == ".parquet":
        import pandas as pd

        return list(pd.read_parquet(file).to_dict("records"))
    raise ValueError(f"manifest {file}: expected a .jsonl, .csv or .parquet file")


@register_source("manifest", ManifestOptions, peek=peek_manifest)
def load_manifest(options: ManifestOptions, base: Path) -> Source:
    """Rows from a JSONL, CSV or Parquet manifest (optionally one split of it, by ``split_column``).

    Integer labels are class indices; name labels are numbered by ``class_names``, or else once for the whole
    dataset by ``mmssl.build.load_source`` (never per split)."""
    file = Path(options.path)
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise FileNotFoundError(f"manifest {file} not found")
    rows = read_manifest_rows(file)
    numbers = list(range(1, len(rows) + 1))  # 1-based data rows of the file, for messages
    if options.split_column is not None:
        if rows and options.split_column not in (names := _column_names(rows)):
            raise KeyError(f"manifest {file}: split_column {options.split_column!r} not found; columns are {names}")
        kept = [i for i, row in enumerate(rows) if str(row.get(options.split_column)) == str(options.split)]
        rows, numbers = [rows[i] for i in kept], [numbers[i] for i in kept]
    elif options.holdout is not None:
        labels = [row.get(options.label_column) if options.label_column else None for row in rows]
        held = set(stratified_holdout(labels, options.holdout, options.holdout_seed)[1])
        kept = [i for i in range(len(rows)) if (i in held) == (options.split == "test")]
        rows, numbers = [rows[i] for i in kept], [numbers[i] for i in kept]
    if options.limit:
        rows = rows[: options.limit]
    columns = _column_names(rows)
    for name in [*options.path_columns, *([options.label_column] if options.label_column else [])]:
        if rows and name not in columns:
            raise KeyError(f"manifest {file}: column {name!r} not found; columns are {columns}")
    for row in rows:
        for name in options.path_columns:
            if row.get(name) not in (None, ""):
                row[name] = (file.parent / row[name]).resolve()
    source = Source(rows, options.class_names, origin=str(file), columns=columns)
    if options.label_column:
        _read_labels(source, options, [f"{file} row {n}" for n in numbers])
    return source


def stratified_holdout(labels: list[Any], share: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(kept, held-out) row indices: within each label value, in sorted order (rows without a label form one
    group), a seeded permutation's first ``round(share * n)`` rows are held out, so every class keeps its share in
    both splits. Both lists are in draw order (group by group, permuted)."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault("" if is_missing_label(label) else str(label), []).append(i)
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    held: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        order = rng.permutation(len(members))
        count = int(round(share * len(members)))
        held += [members[j] for j in order[:count]]
        kept += [members[j] for j in order[count:]]
    return kept, held


def _read_labels(source: Source, options: ManifestOptions, where: list[str]) -> None:
    """Parse the label column into ``row["label"]``: integers as given, names numbered by ``class_names`` or left
    as text for the run's label space (``Source.label_names``)."""
    column = options.label_column
    assert column is not None  # called only for manifests with a label column
    labels, source.unlabelled = parse_label_column(
        [row.get(column) for row in source.rows], where.__getitem__, options.missing_labels
    )
    names = options.class_names
    for i, (row, label) in enumerate(zip(source.rows, labels, strict=True)):
        if isinstance(label, str) and names is not None:
            if label not in names:
                raise LabelError(f"{where[i]}: label {label!r} is not one of class_names {names[:10]}")
            label = names.index(label)
        elif isinstance(label, int) and names is not None and not 0 <= label < len(names):
            raise LabelError(f"{where[i]}: label {label} is not an index of the {len(names)} class_names")
        row["label"] = label
    if names is None and any(isinstance(label, str) for label in labels):
        source.label_names = sorted({label for label in labels if isinstance(label, str)})


class ConcatOptions(SourceOptions):
    parts: list[dict[str, Any]] = Field(
        min_length=1,
        description="Source specs ({source: NAME, ...its options}) whose rows are joined in this order; each row "
        "keeps its own columns (e.g. image-text rows then audio-text rows).",
    )
    repeats: list[int] | None = Field(
        None,
        description="Per part, how many times its rows appear in one epoch (a mixing weight, e.g. [1, 3] shows the "
        "second part's rows three times as often); default: once each. When any part is streamed, the result is "
        "streamed too.",
    )

    @field_validator("repeats")
    @classmethod
    def _positive(cls, repeats: list[int] | None) -> list[int] | None:
        if repeats is not None and any(r < 1 for r in repeats):
            raise ValueError("every repeat must be an integer >= 1")
        return repeats

    @field_validator("parts")
    @classmethod
    def _validate_parts(cls, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each part against its registered source's options; errors name ``parts[i].key``."""
        errors: list[InitErrorDetails] = []
        for i, part in enumerate(parts):
            try:
                resolve_part(part)
            except ValidationError as err:
                for e in err.errors():
                    errors.append(
                        InitErrorDetails(type=e["type"], loc=(i, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                    )
            except (KeyError, RegistryError) as err:
                message = str(err.args[0]) if err.args else str(err)
                where = (i, "source") if "source" in part else (i,)
                errors.append(InitErrorDetails(type=PydanticCustomError("source", message), loc=where, input=part))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return parts


def resolve_part(spec: dict[str, Any]) -> tuple[SourceType, BaseModel]:
    """A ``{source: NAME, ...options}`` spec -> (registered source type, validated options)."""
    if "source" not in spec:
        raise KeyError(f"missing `source` (one of: {', '.join(SOURCES.names())})")
    kind = SOURCES.get(str(spec["source"]))
    return kind, kind.options.model_validate({k: v for k, v in spec.items() if k != "source"})


def peek_concat(options: ConcatOptions, base: Path) -> Source | None:
    """The joined rows when every part can be peeked at."""
    parts = [resolve_part(part) for part in options.parts]
    if any(kind.peek is None or kind.peek(part, base) is None for kind, part in parts):
        return None
    return load_concat(options, base)


@register_source("concat", ConcatOptions, peek=peek_concat)
def load_concat(options: ConcatOptions, base: Path) -> Source:
    """The rows of every part, in order, each with its own columns (a column a part lacks is absent from its
    rows, so the modality it holds is missing there). ``columns`` is the union. Class names are kept when every
    part that has some gives the same list (so labels mean the same in all parts); otherwise there are none."""
    from mmssl.data.streaming.shards import ShardedRows, concat_corpora, corpus_of_rows

    repeats = options.repeats or [1] * len(options.parts)
    if len(repeats) != len(options.parts):
        raise ValueError(f"concat: {len(repeats)} repeats for {len(options.parts)} parts")
    loaded = []
    for part in options.parts:
        kind, part_options = resolve_part(part)
        loaded.append((kind, kind.load(part_options, base)))
    if any(isinstance(source.rows, ShardedRows) for _, source in loaded):
        if options.limit:
            raise ValueError("concat: `limit` is not supported when a part is streamed; set it on the parts")
        if any(source.label_names is not None for _, source in loaded):
            raise LabelError("concat: with a streamed part, every part must have integer labels (or none)")
        corpora = [
            source.rows.corpus
            if isinstance(source.rows, ShardedRows)
            else corpus_of_rows(source.rows, source.origin or kind.name, source.class_names, source.columns)
            for kind, source in loaded
        ]
        given = [c.class_names for c in corpora if c.class_names is not None]
        class_names = given[0] if given and all(n == given[0] for n in given) else None
        corpus = concat_corpora(corpora, repeats, class_names)
        return Source(ShardedRows(corpus), class_names, origin=corpus.origin, columns=corpus.columns)
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    names: list[list[str]] = []
    origins = []
    label_names: set[str] = set()
    integer_labels, unlabelled = "", 0
    for (kind, source), times in zip(loaded, repeats, strict=True):
        for _ in range(times):
            rows.extend(source.rows)
        unlabelled += source.unlabelled
        if source.label_names is not None:
            label_names.update(source.label_names)
        elif any(row.get("label") is not None for row in source.rows):
            integer_labels = source.origin or kind.name
        if label_names and integer_labels:
            raise LabelError(
                f"concat: part {integer_labels} has integer labels while another part has class names; the parts "
                "must label their rows the same way"
            )
        columns.extend(c for c in source.columns or (list(source.rows[0]) if len(source) else []) if c not in columns)
        if source.class_names is not None:
            names.append(list(source.class_names))
        origins.append(source.origin or kind.name)
    if options.limit:
        rows = rows[: options.limit]
    class_names = names[0] if names and all(n == names[0] for n in names) else None
    origin = f"concat({'; '.join(origins)})"
    return Source(rows, class_names, origin, columns, sorted(label_names) if label_names else None, unlabelled)
