"""Training progress: a tqdm bar on a terminal, plain log lines elsewhere (a log file, a batch job's output)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


class LineProgress:
    """The part of tqdm's interface the trainer uses, writing one plain line per ``set_postfix`` (each logged step).

    A bar written to a file fills it with carriage-return frames; these lines read like a log instead.
    """

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO, disable: bool = False) -> None:
        self.total, self.n, self.desc, self.stream, self.disable = total, initial, desc, stream, disable
        self.start, self.first = time.perf_counter(), initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        if self.disable:
            return
        elapsed = time.perf_counter() - self.start
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        self.write(f"{self.desc} step {self.n}/{self.total} {shown} ({rate:.2f} steps/s)")

    def write(self, line: str) -> None:
        if not self.disable:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        return None


def progress(total: int, initial: int, desc: str, disable: bool = False, stream: TextIO | None = None) -> Any:
    """A tqdm bar when ``stream`` (default: stderr, where tqdm writes) and stdout are terminals, else ``LineProgress``
    (a line at each logged step, i.e. every ``train.log_every`` steps)."""
    stream = stream or sys.stderr
    if stream.isatty() and sys.stdout.isatty():
        return tqdm(total=total, initial=initial, disable=disable, desc=desc, file=stream)
    return LineProgress(total, initial, desc, stream, disable)
