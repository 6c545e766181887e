"""Samples/s of one CLIP training step: mmssl vs open_clip vs a bare hand-written PyTorch loop.

One step = forward of both towers, CLIP loss, backward, AdamW update, on pre-made random tensors (no data loading).
The three paths see the very same image and token-id tensors:

  mmssl      a model built by mmssl's own builders (``compile_recipe`` -> ``build_processors`` ->
             ``build_model`` -> ``build_train_module``) from a recipe-like dict with an image and a text modality
             and one ``clip`` objective; each step is ``TrainModule(batch)`` on a ``mmssl.data.dataset.Batch``.
  open_clip  ``open_clip.CLIP`` built from vision_cfg/text_cfg dicts of the same sizes, with ``open_clip.ClipLoss``.
  bare       a minimal ViT + text transformer in plain torch (``nn.Linear`` + ``F.scaled_dot_product_attention``)
             with mmssl's architecture and the CLIP loss written inline: the speed of light for this
             configuration on this machine.

After a warm-up the paths alternate round-robin (``--rounds`` rounds of ``--steps`` steps each) so that machine
noise hits all of them alike; the table gives the median samples/s over rounds and the min/max.

Run: ``.venv/bin/python benchmarks/clip_step.py`` (``--help`` for the flags).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from _timing import (
    TimedPath,
    base_parser,
    count_parameters,
    describe_machine,
    load_average,
    make_step,
    median,
    run_round_robin,
    setup_threads,
    table,
)
from torch import Tensor, nn

from mmssl.batch import CLEAN, Batch
from mmssl.build import build_model, build_processors, build_train_module, probe_batches
from mmssl.compiler import compile_recipe
from mmssl.data.sources import Source
from mmssl.modality import ModalityBatch
from mmssl.train.optim import build_optimizer

LR, WEIGHT_DECAY, BETAS = 1e-3, 0.05, (0.9, 0.95)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.split("\n\n")[0], 5, "Timed rounds; every path runs once per round.")
    p.add_argument("--vision-width", type=int, default=192)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-width", type=int, default=192)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=3, help="Attention heads of both towers in all three paths.")
    p.add_argument("--context-length", type=int, default=32, help="Tokens per text row, special tokens included.")
    p.add_argument("--min-text-len", type=int, default=8, help="Shortest text row; the rest of a row is padding.")
    p.add_argument("--vocab-size", type=int, default=1000, help="Target vocabulary of mmssl's trained tokenizer.")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--paths", default="mmssl,open_clip,bare", help="Comma-separated subset of paths to run.")
    args = p.parse_args(argv)
    if args.vision_width % args.heads or args.text_width % args.heads:
        p.error(f"--heads {args.heads} must divide both widths")
    if not 3 <= args.min_text_len <= args.context_length:
        p.error("--min-text-len must be in [3, --context-length]")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Synthetic corpus and inputs


def make_sentences(count: int, rng: np.random.Generator) -> list[str]:
    """Sentences of pseudo-words, enough distinct words for a WordPiece vocabulary of about a thousand."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "st", "tr", "pl", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
    codas = ["", "", "n", "r", "s", "t", "m", "ck", "nd", "st"]
    lexicon = sorted(
        {
            "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.integers(1, 4)))
            for _ in range(1500)
        }
    )
    return [" ".join(rng.choice(lexicon, size=int(rng.integers(12, 24)))) + "." for _ in range(count)]


def make_ids(
    batch: int,
    length: int,
    min_len: int,
    vocab: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    special: set[int],
    generator: torch.Generator,
) -> Tensor:
    """Token ids ``[CLS] w ... w [SEP] [PAD] ...`` with row lengths uniform in [min_len, length]; row 0 is full.

    Shapes: -> [batch, length] long.
    """
    words = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    ids = words[torch.randint(len(words), (batch, length), generator=generator)]
    lengths = torch.randint(min_len, length + 1, (batch,), generator=generator)
    lengths[0] = length
    pos = torch.arange(length)[None, :]
    ids[:, 0] = cls_id
    ids = torch.where(pos == (lengths - 1)[:, None], sep_id, ids)
    return torch.where(pos >= lengths[:, None], pad_id, ids)


# --------------------------------------------------------------------------------------------------------------------
# (a) mmssl, through its own builders


def recipe_tree(args: argparse.Namespace) -> dict:
    return {
        "name": "clip-step-benchmark",
        # Never loaded: the processors are built from an in-memory Source below.
        "data": {"train": {"source": "manifest", "path": "in-memory.jsonl"}},
        "modalities": {
            "image": {
                "options": {
                    "image_size": args.image_size,
                    "patch_size": args.patch_size,
                    "channels": 3,
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25],
                    "width": args.vision_width,
                    "depth": args.vision_layers,
                    "heads": args.heads,
                    "dropout": 0.0,
                    "pool": "cls",
                }
            },
            "text": {
                "options": {
                    "vocab_size": args.vocab_size,
                    "max_length": args.context_length,
                    "width": args.text_width,
                    "depth": args.text_layers,
                    "heads": args.heads,
                    "dropout": 0.0,
                    "pool": "cls",
                }
            },
        },
        "model": {"embed_dim": args.embed_dim},
        "objectives": [{"name": "clip", "modalities": ["image", "text"]}],
        "train": {"steps": 1, "batch_size": args.batch_size, "lr": LR, "weight_decay": WEIGHT_DECAY},
    }


def build_mmssl(args: argparse.Namespace, rng: np.random.Generator):
    """Processors, train module and optimizer, built the way ``mmssl.train.trainer`` builds them."""
    plan = compile_recipe(recipe_tree(args), source="<clip_step benchmark>")
    sentences = make_sentences(48, rng)
    rows = [
        {"image": rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8), "text": s}
        for s in sentences
    ]
    source = Source(rows=rows, origin="synthetic rows", columns=["image", "text"])
    processors = build_processors(plan, source)
    model = build_model(plan, processors)
    module = build_train_module(plan, model, processors, probe_batches(plan, processors, source))
    spec = plan.recipe.train
    optimizer = build_optimizer(module, spec.lr, spec.weight_decay, spec.betas)
    return processors, module, optimizer


def mmssl_batch(images: Tensor, ids: Tensor, pad_id: int) -> Batch:
    """The ``Batch`` the collator would make from these rows (every row has both modalities)."""
    n = images.shape[0]
    inputs = {
        "image": {CLEAN: ModalityBatch(data=images)},
        "text": {CLEAN: ModalityBatch(data={"ids": ids}, padding_mask=ids == pad_id)},
    }
    present = {"image": torch.ones(n, dtype=torch.bool), "text": torch.ones(n, dtype=torch.bool)}
    return Batch(inputs=inputs, present=present, labels=None, index=torch.arange(n))


# --------------------------------------------------------------------------------------------------------------------
# (b) open_clip


def build_open_clip(args: argparse.Namespace, vocab: int, pad_id: int, eos_id: int) -> open_clip.CLIP:
    vision_cfg = {
        "layers": args.vision_layers,
        "width": args.vision_width,
        "head_width": args.vision_width // args.heads,
        "mlp_ratio": 4.0,
        "patch_size": args.patch_size,
        "image_size": args.image_size,
    }
    text_cfg = {
        "context_length": args.context_length,
        "vocab_size": vocab,
        "width": args.text_width,
        "heads": args.heads,
        "layers": args.text_layers,
        "mlp_ratio": 4.0,
        "pad_id": pad_id,
        "eos_id": eos_id,
        "pool_type": "eos",  # EOT pooling at our tokenizer's [SEP]
    }
    return open_clip.CLIP(args.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, output_dict=True)


# --------------------------------------------------------------------------------------------------------------------
# (c) bare PyTorch: mmssl's architecture without any framework around it


class BareBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class BareTower(nn.Module):
    """Class token + blocks + final LayerNorm; returns the class token's output."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(BareBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, 0])


class BareCLIP(nn.Module):
    def __init__(self, args: argparse.Namespace, vocab: int, pad_id: int) -> None:
        super().__init__()
        wv, wt, grid = args.vision_width, args.text_width, args.image_size // args.patch_size
        self.pad_id = pad_id
        self.patch = nn.Conv2d(3, wv, args.patch_size, args.patch_size)
        self.register_buffer("image_pos", torch.randn(1, grid * grid, wv) * 0.02)  # fixed, like mmssl's sin-cos
        self.vision = BareTower(wv, args.vision_layers, args.heads)
        self.word = nn.Embedding(vocab, wt)
        self.text_pos = nn.Parameter(torch.randn(1, args.context_length, wt) * 0.02)
        self.text = BareTower(wt, args.text_layers, args.heads)
        self.image_proj = nn.Linear(wv, args.embed_dim, bias=False)
        self.text_proj = nn.Linear(wt, args.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        x = self.vision(self.patch(images).flatten(2).transpose(1, 2) + self.image_pos)
        keep = F.pad(ids != self.pad_id, (1, 0), value=True)[:, None, None, :]  # attend to cls + real tokens
        t = self.text(self.word(ids) + self.text_pos[:, : ids.shape[1]], keep)
        x = F.normalize(self.image_proj(x), dim=-1)
        t = F.normalize(self.text_proj(t), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * x @ t.T
        labels = torch.arange(len(logits))
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


# --------------------------------------------------------------------------------------------------------------------


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, loss_fn) -> Callable[[], float]:
    module.train()
    return make_step(optimizer, loss_fn)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Entry points of plugins that are registered but not importable here are irrelevant to this benchmark.
    warnings.filterwarnings("ignore", message=r"entry point .* failed to load", category=RuntimeWarning)
    threads = setup_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    print(describe_machine(threads))
    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(wanted) - {"mmssl", "open_clip", "bare"}
    if unknown:
        sys.exit(f"unknown paths {sorted(unknown)}")

    # mmssl is always built: its trained tokenizer fixes the vocabulary and special ids every path uses.
    t0 = time.perf_counter()
    processors, module, mmssl_opt = build_mmssl(args, rng)
    text = processors["text"]
    vocab, sp = text.vocab_size, text.specials
    print(
        f"built mmssl from the recipe in {time.perf_counter() - t0:.1f} s; tokenizer vocabulary {vocab} "
        f"(pad {sp.pad_id}, cls {sp.cls_id}, sep {sp.sep_id})"
    )

    g = torch.Generator().manual_seed(args.seed)
    b = args.batch_size
    images = torch.randn(b, 3, args.image_size, args.image_size, generator=g)
    ids = make_ids(
        b, args.context_length, args.min_text_len, vocab, sp.cls_id, sp.sep_id, sp.pad_id, set(sp.special_ids), g
    )
    batch = mmssl_batch(images, ids, sp.pad_id)
    padding = (ids == sp.pad_id).float().mean().item()

    models: dict[str, nn.Module] = {"mmssl": module}
    steps: dict[str, Callable[[], float]] = {"mmssl": train_step(module, mmssl_opt, lambda: module(batch)["loss"])}

    oc = build_open_clip(args, vocab, sp.pad_id, sp.sep_id)
    oc_loss = open_clip.ClipLoss()

    def open_clip_loss() -> Tensor:
        out = oc(images, ids)
        return oc_loss(out["image_features"], out["text_features"], out["logit_scale"])

    models["open_clip"] = oc
    steps["open_clip"] = train_step(oc, build_optimizer(oc, LR, WEIGHT_DECAY, BETAS), open_clip_loss)

    bare = BareCLIP(args, vocab, sp.pad_id)
    models["bare"] = bare
    steps["bare"] = train_step(bare, build_optimizer(bare, LR, WEIGHT_DECAY, BETAS), lambda: bare(images, ids))

    print()
    print(
        f"config: batch {b}, images 3x{args.image_size}x{args.image_size} / patch {args.patch_size} "
        f"({(args.image_size // args.patch_size) ** 2} patches), vision width {args.vision_width} x "
        f"{args.vision_layers} layers, text width {args.text_width} x {args.text_layers} layers, {args.heads} heads, "
        f"context {args.context_length} ({100 * padding:.0f}% padding), vocab {vocab}, embed dim {args.embed_dim}, "
        f"AdamW lr {LR} wd {WEIGHT_DECAY} (no weight decay on 1-D params; the same optimizer for every path)"
    )
    print("architecture differences (all paths: pre-norm blocks, GELU MLP x4, class-token image pooling):")
    print("  mmssl      fixed 2-D sin-cos image positions, no ln_pre; text: learned positions, a class token,")
    print("             bidirectional attention with a key-padding mask; loss clamps exp(logit_scale) <= 100 and")
    print("             also computes detached per-direction losses and top-1 accuracy")
    print("  open_clip  learned image positions and ln_pre; text: causal attention mask, no class token, EOT pooling")
    print("             (pool_type 'eos' at [SEP]); nn.MultiheadAttention; ClipLoss (no clamp inside the loss)")
    print("  bare       mmssl's architecture in ~60 lines of plain torch, loss inline")

    params = {name: count_parameters(m) for name, m in models.items()}
    ref = params["mmssl"]
    print()
    print(
        table(
            ["path", "parameters", "vs mmssl"],
            [[n, f"{p:,}", f"{100 * (p / ref - 1):+.2f}%"] for n, p in params.items()],
        )
    )

    paths = [TimedPath(name, steps[name]) for name in ("mmssl", "open_clip", "bare") if name in wanted]
    print()
    print(f"initial loss (ln(batch) = {math.log(b):.3f}): " + ", ".join(f"{p.name} {p.step():.3f}" for p in paths))
    print(f"timing: {args.warmup} warm-up steps per path, then {args.rounds} rounds x {args.steps} steps, round-robin")
    run_round_robin(paths, args.warmup, args.rounds, args.steps)

    rows, speed = [], {}
    for p in paths:
        rates = [b * args.steps / t for t in p.round_times]
        speed[p.name] = median(rates)
        rows.append(
            [
                p.name,
                f"{speed[p.name]:.1f}",
                f"{min(rates):.1f}",
                f"{max(rates):.1f}",
                f"{1000 * median(p.round_times) / args.steps:.0f}",
                f"{params[p.name]:,}",
            ]
        )
    print()
    print(table(["path", "samples/s (median)", "min", "max", "ms/step", "parameters"], rows))
    print()
    ratios = [
        f"{name}/{other} = {speed[name] / speed[other]:.2f}"
        for name, other in (("mmssl", "open_clip"), ("mmssl", "bare"), ("open_clip", "bare"))
        if name in speed and other in speed
    ]
    print("ratios of median samples/s: " + ", ".join(ratios))
    times = {p.name: p.round_times for p in paths}
    per_round = [
        f"{name}/{other} = {median([t_o / t_n for t_n, t_o in zip(times[name], times[other], strict=True)]):.2f}"
        for name, other in (("mmssl", "open_clip"), ("mmssl", "bare"), ("open_clip", "bare"))
        if name in times and other in times
    ]
    print("median of per-round ratios (paths timed side by side): " + ", ".join(per_round))
    best = {name: b * args.steps / min(t) for name, t in times.items()}
    print(
        "ratios of the best rounds (noise only ever adds time): "
        + ", ".join(
            f"{name}/{other} = {best[name] / best[other]:.2f}"
            for name, other in (("mmssl", "open_clip"), ("mmssl", "bare"), ("open_clip", "bare"))
            if name in best and other in best
        )
    )
    summary = ", ".join(f"{n} {s:.1f}" for n, s in speed.items())
    print(
        f"SUMMARY clip_step: samples/s {summary} | {', '.join(ratios)} | batch {b}, {threads} threads, "
        f"torch {torch.__version__}, {load_average()}"
    )


if __name__ == "__main__":
    main()
