"""One CLIP training step of a ViT-B/16 image tower and a 12-layer text tower, in mmssl and in open_clip.

Prints, per configuration, the batch (the largest that fits on a GPU unless ``--batch-size`` is given), samples/s,
peak memory and model FLOPs utilisation (MFU: the step's FLOPs, counted by ``torch.utils.flop_counter`` on the
actual step, times steps/s, over ``--peak-tflops``), and the ratio of mmssl's samples/s to open_clip's for the same
architecture (open_clip ``ViT-B-16``: image 224, patch 16, width 768, 12 layers; text width 512, 8 heads,
12 layers, context 77; embed 512).

    python benchmarks/gpu_step.py                                # one GPU: plain, checkpointing, compile, open_clip
    torchrun --nproc_per_node 8 benchmarks/gpu_step.py --strategy fsdp
    python benchmarks/gpu_step.py --tiny --device cpu            # what the test suite runs (seconds, on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmssl.batch import CLEAN, Batch
from mmssl.encoders.transformer import TransformerEncoder
from mmssl.modality import ModalityBatch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.alignment import CLIPOptions, build_clip
from mmssl.objectives.base import BuildInfo
from mmssl.train.speed import apply_speed_options
from mmssl.train.step import TrainModule


@dataclass
class Arch:
    image_size: int = 224
    patch: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    context: int = 77
    vocab: int = 49408
    embed: int = 512

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64  # open_clip: head width 64


TINY = Arch(image_size=32, patch=16, vision_width=64, vision_layers=2, text_width=64, text_heads=2, text_layers=2,
            context=16, vocab=500, embed=32)  # fmt: skip


class PatchEmbed(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, a.vision_width, a.patch, a.patch)
        self.pos = nn.Parameter(torch.zeros((a.image_size // a.patch) ** 2, a.vision_width))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.proj(images).flatten(2).transpose(1, 2) + self.pos, None


class TokenEmbed(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(a.vocab, a.text_width), nn.Parameter(torch.zeros(a.context, a.text_width))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.embed(ids) + self.pos, None


def mmssl_clip(a: Arch) -> nn.Module:
    towers = {
        "image": TransformerEncoder(PatchEmbed(a), a.vision_width, a.vision_layers, a.vision_heads),
        "text": TransformerEncoder(TokenEmbed(a), a.text_width, a.text_layers, a.text_heads, pool="mean"),
    }
    clip = build_clip(CLIPOptions(name="clip", modalities=("image", "text")), BuildInfo({}, 0, {}))
    return TrainModule(JointEmbeddingModel(towers, a.embed), {"clip": clip}, {"clip": 1.0}, {})


def open_clip_model(a: Arch) -> nn.Module:
    import open_clip

    vision = {"image_size": a.image_size, "layers": a.vision_layers, "width": a.vision_width, "patch_size": a.patch}
    text = {"context_length": a.context, "vocab_size": a.vocab, "width": a.text_width, "heads": a.text_heads,
            "layers": a.text_layers}  # fmt: skip
    return open_clip.CLIP(a.embed, vision, text)


def make_inputs(a: Arch, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(rows, 3, a.image_size, a.image_size, generator=gen)
    ids = torch.randint(0, a.vocab, (rows, a.context), generator=gen)
    return images.to(device), ids.to(device)


def step_fn(kind: str, model: nn.Module, images: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(images.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    if kind == "mmssl":
        inputs = {"image": {CLEAN: ModalityBatch(images)}, "text": {CLEAN: ModalityBatch(ids)}}
        present = {m: torch.ones(len(ids), dtype=torch.bool, device=ids.device) for m in inputs}
        batch = Batch(inputs, present, None, torch.arange(len(ids), device=ids.device))

        def loss() -> torch.Tensor:
            return model(batch)["loss"]
    else:
        import open_clip

        criterion = open_clip.ClipLoss(local_loss=True, gather_with_grad=True,
                                       rank=_rank(), world_size=_world())  # fmt: skip

        def loss() -> torch.Tensor:
            out = model(images, ids)
            return criterion(out[0].float(), out[1].float(), out[2])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            value = loss()
        value.backward()
        optimizer.step()

    return step


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_mib(device: torch.device, base: float) -> float:
    """GPU: peak allocated; CPU: resident high-water mark above the size at ``reset_memory`` (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mib("VmHWM") - base


def reset_memory(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mib("VmRSS")


def build(kind: str, a: Arch, strategy: str, checkpointing: bool, compile: bool, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = (mmssl_clip(a) if kind == "mmssl" else open_clip_model(a)).to(device)
    if kind == "mmssl":
        apply_speed_options(dict(model.model.encoders), checkpointing, compile)
    else:
        model.set_grad_checkpointing(checkpointing)
        if compile:
            model.compile()
    if strategy == "fsdp" and kind == "mmssl":
        from mmssl.train.sharding import shard

        shard(model)
    elif strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
            fully_shard(block)
        fully_shard(model, ignored_params={p for p in model.parameters() if p.dim() == 0})
    elif strategy == "ddp":
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=kind == "mmssl")
    return model


def run(kind: str, args: argparse.Namespace, a: Arch, device: torch.device, checkpointing: bool, compile: bool) -> dict:
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    model = build(kind, a, args.strategy, checkpointing, compile, device)
    batch = args.batch_size or largest_batch(kind, a, args, device, checkpointing, compile)
    step = step_fn(kind, model, *make_inputs(a, batch, device), dtype)
    for _ in range(args.warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    _sync(device)
    base = reset_memory(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "model": kind, "strategy": args.strategy, "processes": _world(), "activation_checkpointing": checkpointing,
        "compile": compile, "precision": args.precision, "batch_per_process": batch,
        "samples_per_s": batch * _world() / seconds, "peak_memory_mib": peak_memory_mib(device, base),
        "step_tflops_per_process": flops / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12) if args.peak_tflops else None,
    }  # fmt: skip
    del model, step
    return result


def largest_batch(kind: str, a: Arch, args: argparse.Namespace, device: torch.device, ckpt: bool, comp: bool) -> int:
    """Double the batch from 8 until a step runs out of memory (GPU only); the last batch that ran."""
    if device.type != "cuda":
        raise SystemExit("--batch-size is required on the CPU")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    good, batch = 0, 8
    while batch <= args.max_batch:
        try:
            model = build(kind, a, args.strategy, ckpt, comp, device)
            step_fn(kind, model, *make_inputs(a, batch, device), dtype)()
            good, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            model = None
            torch.cuda.empty_cache()
    return good


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--strategy", choices=["none", "ddp", "fsdp"], default="none")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--batch-size", type=int, default=None, help="Per process; default: the largest that fits (GPU).")
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="Dense peak of one device (H100/H200 bf16: 989).")
    p.add_argument("--tiny", action="store_true", help="A 2-layer, 64-wide model (the test suite's size).")
    p.add_argument("--configs", default="plain,checkpointing,compile,open_clip",
                   help="Comma list of plain, checkpointing, compile, open_clip.")  # fmt: skip
    args = p.parse_args()
    device = torch.device(args.device)
    if args.strategy != "none":
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    a = TINY if args.tiny else Arch()
    wanted = args.configs.split(",")
    plans = {"plain": ("mmssl", False, False), "checkpointing": ("mmssl", True, False),
             "compile": ("mmssl", False, True), "open_clip": ("open_clip", False, False)}  # fmt: skip
    results = [run(*plans[name][:1], args, a, device, *plans[name][1:]) for name in wanted]
    base = next((r for r in results if r["model"] == "open_clip"), None)
    for r in results:
        r["vs_open_clip"] = r["samples_per_s"] / base["samples_per_s"] if base else None
        if _rank() == 0:
            print(json.dumps(r))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
