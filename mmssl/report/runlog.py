"""What a run folder logged, read for the report: metrics over steps, the evaluation table, collapse warnings."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

#: eval.json suffixes of the baselines every metric stands beside, in the order the report shows them.
BASELINES = ("random_init", "released", "raw", "chance")
BASELINE_LABELS = {"": "trained", "random_init": "random init", "released": "released", "raw": "raw input",
                   "chance": "chance"}  # fmt: skip


@dataclass
class RunLog:
    """A run's logged numbers.

    Attributes:
        steps: metric name -> (steps, values), from ``metrics.jsonl``.
        evaluation: The metrics of ``eval.json`` (flat name -> number), empty when absent.
        errors: Evaluations that failed (``eval.json``'s ``errors``): label -> error.
    """

    steps: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def objective_groups(self) -> dict[str, list[str]]:
        """Objective label -> its logged term names (``clip`` -> ``clip/loss``, ``clip/acc``, ...)."""
        groups: dict[str, list[str]] = defaultdict(list)
        for name in sorted(self.steps):
            head, _, _ = name.partition("/")
            if "/" in name and head != "monitor":
                groups[head].append(name)
        return dict(groups)

    def monitor_groups(self) -> dict[str, list[str]]:
        """Modality (or ``a+b`` pair) -> its ``monitor/<m>/<name>`` series, without the collapse flag."""
        groups: dict[str, list[str]] = defaultdict(list)
        for name in sorted(self.steps):
            parts = name.split("/")
            if parts[0] == "monitor" and len(parts) == 3 and parts[2] != "collapse":
                groups[parts[1]].append(name)
        return dict(groups)

    def collapse_steps(self, modality: str) -> list[int]:
        """Steps at which the monitors flagged ``modality`` as collapsed."""
        steps, flags = self.steps.get(f"monitor/{modality}/collapse", ([], []))
        return [s for s, f in zip(steps, flags, strict=True) if f >= 0.5]

    def evaluation_table(self) -> dict[str, dict[str, float]]:
        """Metric -> {"" (trained), "random_init", "released", "raw", "chance" -> value} from ``eval.json``."""
        table: dict[str, dict[str, float]] = {}
        names = set(self.evaluation)
        for name in sorted(names):
            base, suffix = name, ""
            for candidate in BASELINES:
                if name.endswith("_" + candidate) and name[: -len(candidate) - 1]:
                    base, suffix = name[: -len(candidate) - 1], candidate
                    break
            if suffix == "chance" and base not in names:
                # knn_chance belongs to knn_top1: every metric of the family sharing its prefix
                owners = [n for n in names if n.startswith(base + "_") and not any(n.endswith(b) for b in BASELINES)]
                for owner in owners:
                    table.setdefault(owner, {})[suffix] = float(self.evaluation[name])
                if owners:
                    continue
            table.setdefault(base, {})[suffix] = float(self.evaluation[name])
        return {k: v for k, v in table.items() if "" in v}


def read_run_log(run_dir: Path) -> RunLog:
    """Read ``metrics.jsonl`` and ``eval.json`` of ``run_dir`` (either may be missing).

    Raises:
        ValueError: A line of ``metrics.jsonl`` is not JSON (names the line).
    """
    log = RunLog()
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for number, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics} line {number} is not JSON: {err}") from err
            step = int(record.get("step", number))
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    series[key][0].append(step)
                    series[key][1].append(float(value))
        log.steps = dict(series)
    evaluation = Path(run_dir) / "eval.json"
    if evaluation.is_file():
        found = json.loads(evaluation.read_text())  # metrics, plus "errors" / "skipped_rows" sections
        log.evaluation = {k: float(v) for k, v in found.items() if isinstance(v, int | float)}
        log.errors = dict(found.get("errors") or {})
    return log
