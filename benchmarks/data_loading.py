"""Samples/s of data loading, of the training step, and of both together, for the quickstart and its WebDataset copy.

Three measurements per data source and DataLoader worker count, on the quickstart recipe (its model, views and
batch size):

  loader-only   batches drawn from mmssl's training feed (decode, augment, collate) with no training step
  compute-only  training steps (forward, backward, AdamW) on one pre-made batch, no loading
  end-to-end    the trainer's loop: a batch from the feed, then a training step

With loading off the critical path (DataLoader workers decoding the next batches while the step runs) end-to-end
approaches compute-only; with ``--workers 0`` the two add up. The WebDataset copy is made once with
``mmssl.data.streaming.pack`` (``--shards``, default ``~/.cache/mmssl/bench/quickstart_shards``).

``--rss`` instead streams the WebDataset copy ``--copies`` times over (an index listing its shards repeatedly) for one
loader-only epoch and prints the resident memory of the process and its workers at 10 %, 50 % and 100 % of it.

Run: ``.venv/bin/python benchmarks/data_loading.py`` (``--help`` for the flags).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _timing import describe_machine, load_average, setup_threads, table

from mmssl.build import (
    build_model,
    build_processors,
    build_train_module,
    load_source,
    probe_batches,
)
from mmssl.compiler import compile_recipe
from mmssl.data.feed import TrainFeed
from mmssl.data.sources import SOURCES
from mmssl.data.streaming.pack import pack
from mmssl.train.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--workers", default="2,0", help="Comma-separated DataLoader worker counts (the first: default).")
    p.add_argument("--steps", type=int, default=8, help="Timed batches / steps per measurement.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed batches / steps before each measurement.")
    p.add_argument("--batch-size", type=int, default=None, help="Default: the quickstart's (256).")
    p.add_argument("--sources", default="quickstart,webdataset", help="quickstart (in memory) and/or webdataset.")
    p.add_argument("--shards", type=Path, default=Path.home() / ".cache" / "mmssl" / "bench" / "quickstart_shards")
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores).")
    p.add_argument("--rss", action="store_true", help="Measure resident memory over a long streamed epoch instead.")
    p.add_argument("--copies", type=int, default=10, help="--rss: how many copies of the quickstart to stream.")
    p.add_argument(
        "--rss-decode",
        choices=["none", "full"],
        default="none",
        help="--rss: full runs the quickstart's decoding and augmentation (slow on 2 cores); none replaces the "
        "plugins with a stand-in so that an epoch of the large corpus finishes in minutes.",
    )
    return p.parse_args()


def make_shards(folder: Path, shard_size: int) -> Path:
    if not (folder / "index.json").is_file():
        kind = SOURCES.get("fashion_mnist")
        source = kind.load(kind.options.model_validate({"split": "train"}), REPO)
        print(f"packing the quickstart's {len(source)} rows into {folder} ...", flush=True)
        pack(source, folder, shard_size, spec={"source": "fashion_mnist", "split": "train"})
    return folder / "index.json"


def plan_for(train: dict, batch_size: int | None):
    """The quickstart recipe training from ``train`` (a source spec), without evaluations."""
    overrides = [f"data.train={json.dumps(train)}", "evaluations=[]"]
    if batch_size:
        overrides.append(f"train.batch_size={batch_size}")
    return compile_recipe(QUICKSTART, overrides)


def feed_for(plan, processors, workers: int) -> TrainFeed:
    views = plan.views()
    return TrainFeed(
        load_source(plan, "train"), {m: plan.recipe.column_of(m) for m in views}, processors, views, plan.recipe.seed,
        plan.recipe.train.batch_size, 0, 1, workers, 0, None,
    )  # fmt: skip


def rate(samples: int, seconds: float) -> float:
    return samples / seconds


def measure(plan, processors, module, optimizer, workers: int, steps: int, warmup: int) -> dict[str, float]:
    batch_size = plan.recipe.train.batch_size
    out = {}
    feed = feed_for(plan, processors, workers)
    for _ in range(warmup):
        feed.next()
    start = time.perf_counter()
    for _ in range(steps):
        feed.next()
    out["loader"] = rate(steps * batch_size, time.perf_counter() - start)
    del feed

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        module(batch)["loss"].backward()
        optimizer.step()

    feed = feed_for(plan, processors, workers)
    fixed = feed.next()
    for _ in range(warmup):
        step(fixed)
    start = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    out["compute"] = rate(steps * batch_size, time.perf_counter() - start)
    for _ in range(warmup):
        step(feed.next())
    start = time.perf_counter()
    for _ in range(steps):
        step(feed.next())
    out["end_to_end"] = rate(steps * batch_size, time.perf_counter() - start)
    return out


def memory_of_tree() -> tuple[float, float]:
    """(RSS of this process, PSS of it and its DataLoader workers) in MiB.

    Forked workers share most pages with the main process, so summing their RSS would count those pages several
    times; PSS (proportional set size) splits each shared page among the processes that map it.
    """
    import psutil

    me = psutil.Process()
    pss = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            pss += process.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return me.memory_info().rss / 2**20, pss / 2**20


class RawLength:
    """Stand-in processor for ``--rss-decode none``: a raw value -> a 1-element tensor of its length."""

    def decode(self, raw):
        return torch.tensor([float(len(raw))])

    def prepare(self, sample):
        return sample

    def augment(self, sample, rng):
        return sample

    def collate(self, samples):
        from mmssl.modality import ModalityBatch

        return ModalityBatch(torch.stack(samples))


def measure_rss(args: argparse.Namespace, index: Path) -> None:
    base = json.loads(index.read_text())
    big = dict(base, shards=[dict(s, url=str(index.parent / s["url"])) for s in base["shards"]] * args.copies)
    big_index = index.parent.parent / f"{index.parent.name}_x{args.copies}.json"
    big_index.write_text(json.dumps(big))
    workers = int(args.workers.split(",")[0])
    plan = plan_for({"source": "webdataset", "index": str(big_index)}, args.batch_size)
    if args.rss_decode == "full":
        small = plan_for({"source": "webdataset", "index": str(index)}, args.batch_size)
        feed = feed_for(plan, build_processors(small, load_source(small, "train")), workers)
    else:  # reading, ordering, block caching, collation and worker transfer; no image decoding or augmentation
        plan.views = lambda: {m: ["clean"] for m in plan.recipe.modalities}
        feed = feed_for(plan, {m: RawLength() for m in plan.recipe.modalities}, workers)
    total = feed.order.size
    batches = -(-total // plan.recipe.train.batch_size)
    marks = {max(1, round(batches * f)): f for f in (0.01, 0.1, 0.5, 1.0)}
    print(
        f"streaming {total} samples ({args.copies} x the quickstart) in {batches} batches, {workers} workers, "
        f"decode {args.rss_decode}; before: RSS {memory_of_tree()[0]:.0f} MiB",
        flush=True,
    )
    start = time.perf_counter()
    rows = []
    for b in range(1, batches + 1):
        feed.next()
        if b in marks:
            rss, pss = memory_of_tree()
            rows.append((f"{100 * marks[b]:.0f} %", f"{rss:.0f}", f"{pss:.0f}", f"{time.perf_counter() - start:.0f}"))
            print(f"  {' | '.join(rows[-1])}", flush=True)
    print(table(["epoch", "RSS MiB (main)", "PSS MiB (main + workers)", "s"], rows))
    print(f"SUMMARY rss_mib {' '.join(r[1] for r in rows)} pss_mib {' '.join(r[2] for r in rows)} | {load_average()}")


def main() -> int:
    args = parse_args()
    threads = setup_threads(args.threads)
    print(describe_machine(threads))
    index = make_shards(args.shards, args.shard_size)
    if args.rss:
        measure_rss(args, index)
        return 0
    sources = {
        "quickstart": {"source": "fashion_mnist", "split": "train"},
        "webdataset": {"source": "webdataset", "index": str(index)},
    }
    rows = []
    torch.manual_seed(0)
    reference = plan_for(sources["quickstart"], args.batch_size)
    processors = build_processors(reference, load_source(reference, "train"))
    for name in args.sources.split(","):
        plan = plan_for(sources[name], args.batch_size)
        model = build_model(plan, processors)
        module = build_train_module(
            plan, model, processors, probe_batches(plan, processors, load_source(plan, "train"))
        )
        spec = plan.recipe.train
        optimizer = build_optimizer(module, spec.lr, spec.weight_decay, spec.betas)
        module.train()
        for workers in (int(w) for w in args.workers.split(",")):
            got = measure(plan, processors, module, optimizer, workers, args.steps, args.warmup)
            ratio = got["end_to_end"] / got["compute"]
            numbers = [f"{got[k]:.0f}" for k in ("loader", "compute", "end_to_end")]
            rows.append((f"{name}, {workers} workers", *numbers, f"{ratio:.2f}"))
            print(f"  {' | '.join(rows[-1])}  ({load_average()})", flush=True)
    print(table(["source, workers", "loader-only/s", "compute-only/s", "end-to-end/s", "e2e/compute"], rows))
    print(f"SUMMARY {' ; '.join(' '.join(r) for r in rows)} | {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
