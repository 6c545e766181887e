"""The data error policy (``data.on_error``, ``data.max_errors``): what a run does with rows it cannot read.

Under ``raise`` the first unreadable row stops the run with its file named. Under ``skip`` the row is replaced by
another one chosen as a pure function of (seed, epoch, row, attempt) (``replacement_row``), so a resumed run draws
the same replacements; every skip is appended to ``RUN/skipped.jsonl`` and counted in ``metrics.jsonl``, and the
run stops (``DataErrorLimit``) once more than ``max_errors`` distinct rows could not be read.

``DataErrorPolicy`` holds no reference to a source or a loader, so any reader of rows (in-memory sources, streamed
shards) can report to it. ``readable_rows`` filters a source for readers that use a fixed set of rows (evaluations,
the label-free monitors).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmssl.data.sources import Source
from mmssl.modality import Processor

OnError = Literal["raise", "skip"]

#: Replacement rows tried for one unreadable row before giving up (each failure is recorded).
MAX_ATTEMPTS = 16


@dataclass(frozen=True)
class SkippedRow:
    """One row that could not be read and was replaced.

    Attributes:
        step: Optimizer step whose batch needed the row (0: before training, e.g. fitting the processors).
        row: Index of the row in its source.
        origin: The source (a manifest file, a shard).
        column: The column holding the value.
        file: The value, when it names a file; else None.
        error: What went wrong.
    """

    step: int
    row: int
    origin: str
    column: str
    file: str | None
    error: str

    @classmethod
    def of(cls, step: int, row: int, origin: str, column: str, value: Any, error: BaseException) -> SkippedRow:
        file = str(value) if isinstance(value, str | os.PathLike) else None
        return cls(step, row, origin, column, file, str(error) or type(error).__name__)

    def at_step(self, step: int) -> SkippedRow:
        return SkippedRow(step, self.row, self.origin, self.column, self.file, self.error)


def replacement_row(seed: int, epoch: int, row: int, attempt: int, num_rows: int) -> tuple[int, np.random.Generator]:
    """The row that stands in for unreadable ``row`` at ``attempt`` (1, 2, ...), and the generator of its views.

    A pure function of its arguments: workers, processes and resumed runs all pick the same replacement.
    """
    rng = np.random.default_rng([seed, epoch, row, attempt])
    return int(rng.integers(num_rows)), rng


class DataErrorLimit(RuntimeError):
    """More rows could not be read than ``data.max_errors`` allows."""


class DataErrorPolicy:
    """Counts, records and limits skipped rows.

    Args:
        on_error: ``raise`` or ``skip``.
        max_errors: Distinct unreadable rows tolerated under ``skip``.
        log: ``skipped.jsonl`` to append to (None: count only, e.g. on processes other than the main one).
    """

    def __init__(self, on_error: OnError = "raise", max_errors: int = 100, log: Path | None = None) -> None:
        self.on_error, self.max_errors, self.log = on_error, max_errors, log
        self.total = 0
        self.interval = 0
        self.bad: set[tuple[str, int]] = set()

    @property
    def skip(self) -> bool:
        return self.on_error == "skip"

    def restore(self, file: Path, up_to_step: int, rewrite: bool = False) -> None:
        """Count the skips of ``file`` up to ``up_to_step`` (a resumed run's checkpoint); ``rewrite`` drops the
        later ones (and a torn last line) from the file, atomically."""
        kept = [r for r in read_skipped(file) if r.step <= up_to_step]
        self.total, self.interval = len(kept), 0
        self.bad = {(r.origin, r.row) for r in kept}
        if rewrite and file.exists():
            tmp = file.with_name(f".{file.name}.tmp")
            tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in kept))
            os.replace(tmp, file)

    def record(self, skipped: list[SkippedRow]) -> None:
        """Count and log skips (in the same order on every process).

        Raises:
            DataErrorLimit: More than ``max_errors`` distinct rows are now unreadable.
        """
        if not skipped:
            return
        if self.log is not None:
            # One write per call, flushed: a run killed here leaves at most a torn last line, which restore drops.
            with self.log.open("a") as handle:
                handle.write("".join(json.dumps(asdict(r)) + "\n" for r in skipped))
                handle.flush()
                os.fsync(handle.fileno())
        self.total += len(skipped)
        self.interval += len(skipped)
        self.bad.update((r.origin, r.row) for r in skipped)
        if len(self.bad) > self.max_errors:
            last = skipped[-1]
            where = f" (file {last.file})" if last.file else ""
            listed = f"; every skipped row is listed in {self.log}" if self.log is not None else ""
            raise DataErrorLimit(
                f"{len(self.bad)} rows could not be read, more than data.max_errors = {self.max_errors}; the last: "
                f"row {last.row} of {last.origin}, column {last.column!r}{where}: {last.error}{listed}. "
                "Fix or remove those rows, or raise data.max_errors."
            )

    def metrics(self) -> dict[str, int]:
        """``skipped_rows`` (this logging interval), ``skipped_rows_total`` and ``bad_rows`` (distinct, so far);
        starts a new interval."""
        out = {"skipped_rows": self.interval, "skipped_rows_total": self.total, "bad_rows": len(self.bad)}
        self.interval = 0
        return out


def read_skipped(file: Path) -> list[SkippedRow]:
    """The rows listed in a ``skipped.jsonl`` (a torn last line, from a run killed while writing, is left out)."""
    if not file.is_file():
        return []
    rows = []
    for line in file.read_text().splitlines():
        try:
            rows.append(SkippedRow(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return rows


def readable_rows(
    source: Source, columns: dict[str, str], processors: dict[str, Processor]
) -> tuple[Source, list[SkippedRow]]:
    """The rows whose every modality value decodes (each is decoded here once more than its use will), and the
    skips (step 0) of the others."""
    from mmssl.data.dataset import is_missing  # late: dataset imports this module

    kept, skipped = [], []
    for i, row in enumerate(source.rows):
        for modality, column in columns.items():
            value = row.get(column)
            if is_missing(value):
                continue
            try:
                processors[modality].decode(value)
            except Exception as err:  # noqa: BLE001  (whatever the plugin raises on a bad value)
                skipped.append(SkippedRow.of(0, i, source.origin, column, value, err))
                break
        else:
            kept.append(row)
    return (replace(source, rows=kept) if skipped else source), skipped
