"""Streamed training under torchrun: an uninterrupted run, a run stopped mid-epoch, and its resume (run under torchrun).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 streaming_resume.py JOBS.json``

``JOBS.json`` maps a name to ``{"tree": recipe tree, "out": folder}``. For each job the script trains
``out/full`` (all steps), ``out/stopped`` (stopped after step 3, with full's processors) and ``out/resumed2``
(a copy of stopped, resumed with the same two processes). A job with ``resume_from`` (listed after a job of the
first kind) only resumes a copy of that run folder, stopped by one process, with two processes into
``out/resumed2``. Every run writes ``seen_rank{R}.json``: the natural sample indices of each micro-batch this
process trained on.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist
from dist_common import exit_without_teardown

import mmssl.data.feed as feed
from mmssl.compiler import compile_recipe
from mmssl.train.trainer import train

SEEN: list[list[int]] = []
_next = feed.TrainFeed.next


def _recording_next(self: feed.TrainFeed):
    batch = _next(self)
    SEEN.append(batch.index.tolist())
    return batch


feed.TrainFeed.next = _recording_next


def run(tree: dict, out: Path, barrier_first: bool = False, **kwargs) -> None:
    if barrier_first and dist.is_initialized():
        dist.barrier()
    SEEN.clear()
    plan = compile_recipe(tree, source=str(out), base_dir=out.parent)
    train(plan, out, **kwargs)
    (out / f"seen_rank{dist.get_rank()}.json").write_text(json.dumps(SEEN))
    dist.barrier()


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for job in jobs.values():
        out = Path(job["out"])
        if "resume_from" in job:  # elastic 1 -> 2: a single-process run's checkpoint, resumed by two processes
            if dist.get_rank() == 0:  # the process group exists: an earlier job trained
                shutil.copytree(job["resume_from"], out / "resumed2", ignore=shutil.ignore_patterns("seen_rank*"))
            run(job["tree"], out / "resumed2", resume=True, barrier_first=True)
            continue
        run(job["tree"], out / "full")
        if dist.get_rank() == 0:  # full's setup (processors, labels, recipe): `tokenizers` may number a fresh
            (out / "stopped").mkdir()  # vocabulary differently, and bit-identity needs the same one
            shutil.copytree(out / "full" / "processors", out / "stopped" / "processors")
            for name in ("labels.json", "recipe.yaml", "run.json"):
                shutil.copy(out / "full" / name, out / "stopped" / name)
        dist.barrier()
        run(job["tree"], out / "stopped", resume=True, stop_after=3)
        if dist.get_rank() == 0:
            shutil.copytree(out / "stopped", out / "resumed2")
        dist.barrier()
        run(job["tree"], out / "resumed2", resume=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
