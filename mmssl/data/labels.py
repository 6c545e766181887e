"""Class labels: parsing a label column, and the one label space a run uses for every split.

A label column holds integers (class indices as given) or names (text). Names are numbered once for the whole
dataset, over the union of every split (sorted) or in the order of a source's ``class_names``, never per split.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_INTEGER = re.compile(r"\s*[-+]?\d+\s*")


class LabelError(ValueError):
    """A label column holds a value that cannot be a class; the message names the file, row and value."""


def is_missing_label(value: Any) -> bool:
    """None, NaN or the empty string (any other value, arrays included, is present)."""
    return (
        value is None
        or (isinstance(value, float | np.floating) and math.isnan(value))
        or (isinstance(value, str) and value == "")
    )


def parse_label(value: Any, where: str) -> int | str:
    """A present label as a class: an ``int`` (integers and integral numbers) or a ``str`` name.

    Raises:
        LabelError: A number that is not an integer (``2.5``), e.g. a regression target in a class column.
    """
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise LabelError(f"{where}: label {value!r} is not an integer class index")
    text = str(value)
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise LabelError(f"{where}: label {value!r} is not an integer class index")


def parse_label_column(
    values: Sequence[Any], where: Callable[[int], str], missing: str = "error"
) -> tuple[list[int | str | None], int]:
    """Parse a whole label column; all labels must be integers, or all names.

    Args:
        values: The raw labels, one per row.
        where: Row position -> its description in messages (``"data.csv row 7"``).
        missing: ``error`` (a row without a label is an error) or ``unlabelled`` (it gets ``None``).

    Returns:
        The parsed labels (``None`` for unlabelled rows) and the number of unlabelled rows.

    Raises:
        LabelError: A missing label (unless ``unlabelled``), a non-integer number, or names mixed with integers.
    """
    out: list[int | str | None] = []
    first: dict[type, tuple[int, Any]] = {}
    unlabelled = 0
    for i, value in enumerate(values):
        if is_missing_label(value):
            if missing != "unlabelled":
                raise LabelError(
                    f"{where(i)}: label is missing (got {value!r}); give every row a label, or set "
                    "`missing_labels: unlabelled` to train on such rows and leave them out of evaluations"
                )
            out.append(None)
            unlabelled += 1
            continue
        label = parse_label(value, where(i))
        first.setdefault(type(label), (i, value))
        if len(first) > 1:
            ((i0, v0),) = [first[t] for t in first if t is not type(label)]
            kinds = {int: "an integer", str: "a class name"}
            raise LabelError(
                f"{where(i)}: label {value!r} is {kinds[type(label)]} but {where(i0)} holds {v0!r}, "
                f"{kinds[type(parse_label(v0, where(i0)))]}; a label column holds integers only or names only"
            )
        out.append(label)
    return out, unlabelled


@dataclass
class LabelSpace:
    """The classes of a run's dataset, shared by every split.

    Attributes:
        class_names: Class ``i`` is ``class_names[i]``; None when labels are integers without names.
        named: True when the sources give names (text labels), which ``class_names`` numbers.
        only_in: split -> classes present there but not in ``train`` (reported, kept).
        unlabelled: split -> rows without a label.
    """

    class_names: list[str] | None = None
    named: bool = False
    only_in: dict[str, list[Any]] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "named": self.named,
            "only_in": self.only_in,
            "unlabelled": self.unlabelled,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelSpace:
        return cls(data.get("class_names"), bool(data.get("named")), dict(data.get("only_in", {})),
                   dict(data.get("unlabelled", {})))  # fmt: skip


def _classes(rows: Sequence[Mapping[str, Any]]) -> set[Any]:
    declared = getattr(rows, "declared_classes", None)  # streamed rows: their class names, without a read pass
    if declared is not None and declared() is not None:
        return declared()
    return {row.get("label") for row in rows if row.get("label") is not None}


def resolve_label_space(sources: Mapping[str, Any]) -> LabelSpace:
    """One label space over all splits (``Source`` objects by split name, as loaded, labels not yet numbered).

    Raises:
        LabelError: One split has class names (text labels) while another has integer labels.
    """
    named = {split: s for split, s in sources.items() if s.label_names is not None}
    integer = {split: s for split, s in sources.items() if s.label_names is None and _classes(s.rows)}
    space = LabelSpace(unlabelled={k: s.unlabelled for k, s in sources.items() if s.unlabelled})
    if named and integer:
        (a, sa), (b, sb) = next(iter(named.items())), next(iter(integer.items()))
        raise LabelError(
            f"data.{a} ({sa.origin}) has class names as labels but data.{b} ({sb.origin}) has integer labels; "
            "every split of a run must label its rows the same way"
        )
    if named:
        space.named = True
        space.class_names = sorted(set().union(*(s.label_names for s in named.values())))
    elif integer:  # integer labels are used as given; they have names when every labelled split agrees on them
        given = {k: list(s.class_names) if s.class_names else None for k, s in integer.items()}
        lists = list(given.values())
        if lists[0] is not None and all(names == lists[0] for names in lists):
            space.class_names = lists[0]
        elif len({tuple(names) for names in lists if names is not None}) > 1:
            warnings.warn(
                f"the splits name their integer classes differently ({ {k: (v or [])[:3] for k, v in given.items()} }"
                "...); each split keeps its own names",
                stacklevel=2,
            )
    if "train" in sources:
        seen = _classes(sources["train"].rows)
        for split, source in sources.items():
            extra = sorted(_classes(source.rows) - seen, key=str)
            if split != "train" and extra and seen:
                space.only_in[split] = extra
                warnings.warn(
                    f"data.{split} ({source.origin}) has {len(extra)} class(es) that data.train never shows: "
                    f"{extra[:10]}{' ...' if len(extra) > 10 else ''}",
                    stacklevel=2,
                )
    return space


def apply_label_space(source: Any, space: LabelSpace) -> Any:
    """Number a source's text labels by the run's label space (in place); integer labels stay as they are.

    Raises:
        LabelError: A label the run's label space does not hold (the data changed since the run was set up).
    """
    if source.label_names is not None:
        if not space.named or space.class_names is None:
            raise LabelError(f"{source.origin}: has class names as labels, but the run's labels are integers")
        lookup = {name: i for i, name in enumerate(space.class_names)}
        for i, row in enumerate(source.rows):
            label = row.get("label")
            if isinstance(label, str):
                if label not in lookup:
                    raise LabelError(
                        f"{source.origin} row {i + 1}: label {label!r} is not one of the run's classes "
                        f"{space.class_names[:10]}{' ...' if len(space.class_names) > 10 else ''}"
                    )
                row["label"] = lookup[label]
        source.label_names = None
    elif space.named and _classes(source.rows):
        raise LabelError(f"{source.origin}: has integer labels, but the run's labels are class names")
    if space.class_names is not None:
        source.class_names = list(space.class_names)
    return source
