"""Step time of mmssl's MAE (visible tokens only) versus the same encoder run on every token (SimMIM/BEiT style).

Both paths train mmssl's image encoder (a ViT built by the image plugin) with a light MAE decoder at the same mask
ratio, on the same pre-made random images; one step = masking, forward, masked-patch MSE, backward, AdamW update.

  mae   mmssl as configured by a recipe with one ``mae`` objective: the encoder sees only the ``1 - ratio`` visible
        patches (``ModalityBatch.keep``), the decoder puts mask tokens back and predicts every patch.
  full  a baseline written here: the same encoder sees all patches, the hidden ones replaced by a learned mask
        token before the positions are added (``keep=None``); the same kind of decoder (without scattering) and loss.

The decoder runs on all N positions in both paths, so the difference is the encoder's token count: K + 1 versus
N + 1 with the class token. The MAE paper reports about 3x faster pre-training from this with a deep encoder and a
light decoder.

Run: ``.venv/bin/python benchmarks/mae_speedup.py`` (``--help`` for the flags).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
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
from mmssl.objectives.functional import masked_mse
from mmssl.train.optim import build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.split("\n\n")[0], 3, "Timed rounds; both paths run once per round.")
    p.add_argument("--width", type=int, default=192, help="Encoder width.")
    p.add_argument("--depth", type=int, default=8, help="Encoder blocks.")
    p.add_argument("--heads", type=int, default=3, help="Encoder heads.")
    p.add_argument("--decoder-width", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=1)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    return p.parse_args(argv)


def recipe_tree(args: argparse.Namespace) -> dict:
    return {
        "name": "mae-speedup-benchmark",
        "data": {"train": {"source": "manifest", "path": "in-memory.jsonl"}},  # never loaded
        "modalities": {
            "image": {
                "options": {
                    "image_size": args.image_size,
                    "patch_size": args.patch_size,
                    "channels": 3,
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25],
                    "width": args.width,
                    "depth": args.depth,
                    "heads": args.heads,
                    "dropout": 0.0,
                    "norm_pix_loss": True,
                }
            }
        },
        "model": {"embed_dim": 128},
        "objectives": [
            {
                "name": "mae",
                "modality": "image",
                "mask_ratio": args.mask_ratio,
                "decoder_width": args.decoder_width,
                "decoder_depth": args.decoder_depth,
                "decoder_heads": args.decoder_heads,
            }
        ],
        "train": {"steps": 1, "batch_size": args.batch_size},
    }


class MaskTokenEmbedder(nn.Module):
    """SimMIM/BEiT input: embed every patch, replace the hidden ones by a learned mask token, then add positions.

    Reuses an ``mmssl_image.PatchEmbedder``'s projection and fixed positions. ``data`` is
    ``{"images": [B, C, H, W], "mask": [B, N] bool (True = hidden)}``; returns tokens [B, N, D] and no padding.
    """

    def __init__(self, patches: nn.Module) -> None:
        super().__init__()
        self.patches = patches
        self.mask_token = nn.Parameter(torch.randn(1, 1, patches.width) * 0.02)

    def forward(self, data: dict[str, Tensor]) -> tuple[Tensor, None]:
        x = self.patches.proj(data["images"]).flatten(2).transpose(1, 2)
        x = torch.where(data["mask"].unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return x + self.patches.positions.to(x.dtype), None


def build(args: argparse.Namespace, rng: np.random.Generator):
    """mmssl's processor and MAE train module, built the way the trainer builds them."""
    plan = compile_recipe(recipe_tree(args), source="<mae_speedup benchmark>")
    rows = [{"image": rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)} for _ in range(4)]
    source = Source(rows=rows, origin="synthetic rows", columns=["image"])
    processors = build_processors(plan, source)
    probes = probe_batches(plan, processors, source)
    model = build_model(plan, processors)
    return plan, processors, probes, build_train_module(plan, model, processors, probes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Entry points of plugins that are registered but not importable here are irrelevant to this benchmark.
    warnings.filterwarnings("ignore", message=r"entry point .* failed to load", category=RuntimeWarning)
    threads = setup_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    print(describe_machine(threads))

    t0 = time.perf_counter()
    plan, processors, probes, mae = build(args, rng)
    # A second, independent build gives the baseline its own encoder and decoder of the same sizes.
    _, _, _, other = build(args, rng)
    print(f"built both models from the recipe in {time.perf_counter() - t0:.1f} s")
    processor = processors["image"]
    encoder: nn.Module = other.model.encoders["image"]
    encoder.embedder = MaskTokenEmbedder(encoder.embedder)
    decoder: nn.Module = other.objectives["mae"].decoder
    full = nn.ModuleDict({"encoder": encoder, "decoder": decoder})

    g = torch.Generator().manual_seed(args.seed)
    b, ratio = args.batch_size, args.mask_ratio
    images = torch.randn(b, 3, args.image_size, args.image_size, generator=g)
    batch = Batch(
        inputs={"image": {CLEAN: ModalityBatch(data=images)}},
        present={"image": torch.ones(b, dtype=torch.bool)},
        labels=None,
        index=torch.arange(b),
    )
    image_batch = batch.inputs["image"][CLEAN]

    def full_loss() -> Tensor:
        masked = processor.mask(image_batch, ratio)  # same masking and targets as the MAE path; keep is unused
        out = encoder(ModalityBatch(data={"images": images, "mask": masked.mask}))
        pred = decoder(out.tokens, None, masked.mask.shape[1], None)
        return masked_mse(pred.float(), masked.target.float(), masked.mask)

    spec = plan.recipe.train
    mae.train()
    full.train()
    mae_step = make_step(build_optimizer(mae, spec.lr, spec.weight_decay, spec.betas), lambda: mae(batch)["loss"])
    full_step = make_step(build_optimizer(full, spec.lr, spec.weight_decay, spec.betas), full_loss)

    n = (args.image_size // args.patch_size) ** 2
    k = processor.mask(image_batch, ratio).batch.keep.shape[1]
    mae_params = count_parameters(mae.model.encoders["image"]) + count_parameters(mae.objectives)
    full_params = count_parameters(full)
    print()
    print(
        f"config: batch {b}, images 3x{args.image_size}x{args.image_size} / patch {args.patch_size} ({n} patches), "
        f"encoder width {args.width} x {args.depth} blocks, {args.heads} heads; decoder width {args.decoder_width} x "
        f"{args.decoder_depth} blocks, {args.decoder_heads} heads; mask ratio {ratio}; AdamW (mmssl's build_optimizer)"
    )
    print(
        table(
            ["path", "encoder tokens", "decoder tokens", "parameters"],
            [
                ["mae (visible only)", f"{k} + cls", f"{n}", f"{mae_params:,}"],
                ["full (mask tokens)", f"{n} + cls", f"{n}", f"{full_params:,}"],
            ],
        )
    )
    print()
    paths = [TimedPath("mae", mae_step), TimedPath("full", full_step)]
    print("initial loss: " + ", ".join(f"{p.name} {p.step():.3f}" for p in paths))
    print(f"timing: {args.warmup} warm-up steps per path, then {args.rounds} rounds x {args.steps} steps, round-robin")
    run_round_robin(paths, args.warmup, args.rounds, args.steps)

    rows, ms = [], {}
    for p in paths:
        per_step = [1000 * t / args.steps for t in p.round_times]
        ms[p.name] = median(per_step)
        rows.append(
            [
                p.name,
                f"{ms[p.name]:.0f}",
                f"{min(per_step):.0f}",
                f"{max(per_step):.0f}",
                f"{1000 * b / ms[p.name]:.1f}",
            ]
        )
    print()
    print(table(["path", "ms/step (median)", "min", "max", "samples/s"], rows))
    speedup = ms["full"] / ms["mae"]
    ideal = (n + 1) / (k + 1)
    print()
    rounds = [f / m for m, f in zip(paths[0].round_times, paths[1].round_times, strict=True)]
    print(
        f"speed-up of the visible-only path: {speedup:.2f}x from the medians, {median(rounds):.2f}x median of "
        f"per-round ratios (min {min(rounds):.2f}x, max {max(rounds):.2f}x)"
    )
    print(
        f"speed-up of the best rounds (noise only ever adds time): "
        f"{min(paths[1].round_times) / min(paths[0].round_times):.2f}x"
    )
    print(
        f"for reference: encoder token ratio {n + 1}/{k + 1} = {ideal:.2f}x; the MAE paper reports ~3x or more "
        f"for large ViTs"
    )
    print(
        f"SUMMARY mae_speedup: mae {ms['mae']:.0f} ms/step, full {ms['full']:.0f} ms/step, speed-up {speedup:.2f}x | "
        f"batch {b}, depth {args.depth}, mask ratio {ratio}, {threads} threads, torch {torch.__version__}, "
        f"{load_average()}"
    )


if __name__ == "__main__":
    main()
