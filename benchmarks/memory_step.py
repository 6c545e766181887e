"""Peak memory and time of one CLIP training step on the CPU: GradCache chunk sizes, activation checkpointing,
torch.compile, and (under torchrun) FSDP against DDP.

Memory is the process's resident-set high-water mark during the step above its size just before it (Linux
``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs`` after untimed warm-up steps), so it counts
activations, gradients and optimizer state that the step allocates, on any device-less machine.

    python benchmarks/memory_step.py                                   # chunk curve, checkpointing, compile
    python benchmarks/memory_step.py --compile-timing                  # compile speed-up, timed round-robin
    torchrun --nproc_per_node 2 benchmarks/memory_step.py --strategies  # FSDP vs DDP, per process
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from mmssl.batch import CLEAN, Batch
from mmssl.encoders.transformer import TransformerEncoder
from mmssl.modality import ModalityBatch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.alignment import CLIPOptions, build_clip
from mmssl.objectives.base import BuildInfo
from mmssl.train.grad_cache import GradCache, sync_gradients
from mmssl.train.speed import apply_speed_options
from mmssl.train.step import TrainModule


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def release_freed_memory() -> None:
    """Make glibc return freed memory to the system, so the resident set is what is in use: tensors of 64 KiB and
    more get their own mappings (no dynamic threshold) and the heap is trimmed."""
    libc = _libc()
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)


def reset_peak() -> float:
    """Reset the high-water mark to the current resident set; returns that size (MiB)."""
    release_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


class Embedder(nn.Module):
    def __init__(self, features: int, width: int, tokens: int) -> None:
        super().__init__()
        self.linear, self.pos = nn.Linear(features, width), nn.Parameter(torch.zeros(tokens, width))

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(data) + self.pos, None


def build(args: argparse.Namespace) -> TrainModule:
    torch.manual_seed(0)
    towers = {
        m: TransformerEncoder(Embedder(args.features, args.width, args.tokens), args.width, args.depth, args.heads)
        for m in ("image", "text")
    }
    clip = build_clip(CLIPOptions(name="clip", modalities=("image", "text")), BuildInfo({}, 0, {}))
    return TrainModule(JointEmbeddingModel(towers, args.width), {"clip": clip}, {"clip": 1.0}, {})


def batch_of(args: argparse.Namespace, rows: int) -> Batch:
    gen = torch.Generator().manual_seed(1)
    inputs = {
        m: {CLEAN: ModalityBatch(torch.randn(rows, args.tokens, args.features, generator=gen))}
        for m in ("image", "text")
    }
    present = {m: torch.ones(rows, dtype=torch.bool) for m in inputs}
    return Batch(inputs, present, None, torch.arange(rows))


def measure(module: nn.Module, inner: nn.Module, batch: Batch, chunk: int | None, steps: int) -> tuple[float, float]:
    """Peak step memory above the pre-step size (MiB) and seconds per step, after one untimed step."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    cache = GradCache(chunk, nullcontext, lambda loss: loss.backward()) if chunk else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if cache is not None:
            cache.step(module, inner, batch, 1.0)
            sync_gradients(inner)
        else:
            module(batch)["loss"].backward()
        optimizer.step()

    step()
    optimizer.zero_grad(set_to_none=True)
    base = reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return status_mib("VmHWM") - base, seconds


def single_process(args: argparse.Namespace) -> None:
    batch = batch_of(args, args.batch_size)
    print(f"CLIP step, 2 towers width {args.width} depth {args.depth}, {args.tokens} tokens, batch {args.batch_size}")
    print(f"{'configuration':44s} {'peak MiB':>9s} {'s/step':>8s}")
    for chunk in (args.batch_size, args.batch_size // 4, args.batch_size // 16):
        module = build(args)
        mib, sec = measure(module, module, batch, chunk, args.steps)
        print(f"{f'contrastive_chunk {chunk}':44s} {mib:9.1f} {sec:8.3f}")
    for label, ckpt, compiled in (
        ("plain step (no chunk)", False, False),
        ("activation_checkpointing", True, False),
        ("compile", False, True),
        ("compile + activation_checkpointing", True, True),
    ):
        module = build(args)
        apply_speed_options(dict(module.model.encoders), ckpt, compiled)
        mib, sec = measure(module, module, batch, None, args.steps)
        print(f"{label:44s} {mib:9.1f} {sec:8.3f}")


def strategies(args: argparse.Namespace) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from mmssl.train.sharding import shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = batch_of(args, args.batch_size)
    for label in ("ddp", "fsdp"):
        inner = build(args)
        module = shard(inner) if label == "fsdp" else DistributedDataParallel(inner)
        before = status_mib("VmRSS")
        mib, sec = measure(module, inner, batch, None, args.steps)
        held = status_mib("VmRSS") - before  # grads and AdamW state kept after the step
        report = torch.tensor([mib, sec, held])
        dist.all_reduce(report, op=dist.ReduceOp.MAX)
        if rank == 0:
            mib, sec, held = report.tolist()
            print(
                f"{label} x{world}: peak step {mib:7.1f} MiB, state kept {held:7.1f} MiB, {sec:.3f} s/step (max rank)"
            )
        del module, inner
    dist.destroy_process_group()


def compile_timing(args: argparse.Namespace) -> None:
    """Seconds per step with and without ``train.compile``, timed round-robin after warm-up (compilation)."""
    from _timing import TimedPath, describe_machine, median, run_round_robin

    batch = batch_of(args, args.batch_size)
    paths = []
    for name, compiled in (("eager", False), ("compile", True)):
        module = build(args)
        apply_speed_options(dict(module.model.encoders), False, compiled)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step(module: nn.Module = module, optimizer: torch.optim.Optimizer = optimizer) -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = module(batch)["loss"]
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        paths.append(TimedPath(name, step))
    print(describe_machine(torch.get_num_threads()))
    run_round_robin(paths, warmup=3, rounds=args.rounds, steps=args.steps)
    eager, compiled = (median(p.round_times) / args.steps for p in paths)
    print(f"eager {eager:.3f} s/step, compiled {compiled:.3f} s/step: speed-up x{eager / compiled:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--strategies", action="store_true", help="FSDP vs DDP (run under torchrun).")
    p.add_argument("--compile-timing", action="store_true", help="Only time eager against compiled encoders.")
    p.add_argument("--rounds", type=int, default=5, help="--compile-timing: timed rounds.")
    args = p.parse_args()
    if args.compile_timing:
        compile_timing(args)
        return
    release_freed_memory()
    strategies(args) if args.strategies else single_process(args)


if __name__ == "__main__":
    main()
