"""Sharded (FSDP, torch distributed checkpoint) checkpoints move between process counts and strategies.

A deterministic recipe (CLIP + SimCLR, no dropout, no masks; augmentations are keyed by row) and the same fitted
processors make one process with a 32-row batch and two processes with 16 rows each the same run, up to float32
rounding. Two FSDP processes write
a sharded checkpoint at step 2; it resumes under one process and under two DDP processes, and both end with the
weights of the uninterrupted one-process run. Export/eval read the sharded checkpoint in one process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tolerances import F32
from torchrun import run_two_processes

from mmssl.compiler import compile_recipe
from mmssl.recipe import apply_overrides, load_yaml
from mmssl.run import load_run
from mmssl.train.dist_checkpoint import checkpoint_tensors, is_sharded_checkpoint
from mmssl.train.trainer import train

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
DETERMINISTIC = [
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=4",
    "train.warmup_steps=1",
    "modalities.text.options.dropout=0.0",
]


def write_recipe(folder: Path) -> Path:
    tree = apply_overrides(load_yaml(TINY), DETERMINISTIC)
    tree["objectives"] = [o for o in tree["objectives"] if o["name"] in ("clip", "simclr")]
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    path = folder / "deterministic.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def plan_of(recipe: Path, batch_size: int):
    return compile_recipe(recipe, [f"train.batch_size={batch_size}"])


def assert_weights_close(got: Path, want: Path) -> None:
    a, b = load_file(str(got)), load_file(str(want))
    assert a.keys() == b.keys()
    for key in b:
        scale = max(1.0, float(b[key].abs().max()))
        torch.testing.assert_close(a[key], b[key], rtol=F32["rtol"], atol=10 * F32["atol"] * scale, msg=key)


def copy_setup(src: Path, dst: Path, **train: object) -> None:
    """Give ``dst`` the setup of run ``src`` (fitted processors, labels, recipe), to train with ``--resume`` from
    step 0: the WordPiece vocabulary's order of ties differs from one fit to the next, so runs compared weight by
    weight share one fit. ``train`` overrides keys of the saved recipe's ``train`` section."""
    import yaml

    from mmssl.train.run_folder import SETUP_FILES

    dst.mkdir(parents=True, exist_ok=True)
    for name in SETUP_FILES:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).is_file():
            shutil.copy(src / name, dst / name)
    if train:
        tree = yaml.safe_load((dst / "recipe.yaml").read_text())
        tree["train"].update(train)
        (dst / "recipe.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def stopped_at_step_2(run: Path, dest: Path) -> Path:
    """A copy of ``run`` as if killed after its step-2 checkpoint."""
    shutil.copytree(run, dest)
    for late in ("model.safetensors", "objectives.safetensors", "checkpoints/step_0000004"):
        target = dest / late
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (dest / "checkpoints" / "latest").write_text("step_0000002")
    (dest / "metrics.jsonl").unlink()
    return dest


@pytest.mark.slow
def test_sharded_checkpoint_resumes_under_one_process_and_under_ddp(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    reference = tmp_path / "one_process"
    assert train(plan_of(recipe, 32), reference).finished

    sharded = tmp_path / "fsdp"
    copy_setup(reference, sharded)  # the same global batch of 32 rows: 2 processes x 16
    code, output = run_two_processes(
        ["-m", "mmssl.cli", "train", str(recipe), "train.batch_size=16", "train.strategy=fsdp", "-o", str(sharded),
         "--resume", "--no-eval"]
    )  # fmt: skip
    assert code == 0, output
    step2 = sharded / "checkpoints" / "step_0000002"
    assert is_sharded_checkpoint(step2) and len(list((step2 / "sharded").glob("*.distcp"))) == 2
    assert_weights_close(sharded / "model.safetensors", reference / "model.safetensors")

    # Export/eval read the sharded checkpoint in one process: the same tensors as the replicated one.
    replicated = load_file(str(reference / "checkpoints" / "step_0000002" / "model.safetensors"))
    consolidated = checkpoint_tensors(step2)
    assert consolidated.keys() == replicated.keys()
    torch.testing.assert_close(
        consolidated["model.projections.image.weight"], replicated["model.projections.image.weight"], **F32
    )
    run = load_run(stopped_at_step_2(sharded, tmp_path / "eval_copy"))
    torch.testing.assert_close(run.model.projections.image.weight, replicated["model.projections.image.weight"], **F32)

    one = stopped_at_step_2(sharded, tmp_path / "resume_one")
    result = train(plan_of(recipe, 32), one, resume=True)
    assert result.finished and result.step == 4
    assert_weights_close(one / "model.safetensors", reference / "model.safetensors")

    ddp = stopped_at_step_2(sharded, tmp_path / "resume_ddp")
    code, output = run_two_processes(
        ["-m", "mmssl.cli", "train", str(recipe), "train.batch_size=16", "-o", str(ddp), "--resume", "--no-eval"]
    )
    assert code == 0, output
    assert not is_sharded_checkpoint(ddp / "checkpoints" / "step_0000004")  # DDP writes replicated checkpoints
    assert_weights_close(ddp / "model.safetensors", reference / "model.safetensors")


@pytest.mark.slow
def test_fsdp_bf16_trains_end_to_end_close_to_float32(tmp_path: Path) -> None:
    """Autocast bf16 plus FSDP's bf16 parameter policy (float32 gradient reduction): the run finishes, the saved
    weights are float32, and the first step's loss is that of the float32 FSDP run to bf16 precision."""
    import json

    recipe = write_recipe(tmp_path)
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["train.precision=bf16", "train.fsdp.param_dtype=bfloat16",
                                                "train.fsdp.reduce_dtype=float32"])):  # fmt: skip
        out = tmp_path / name
        if runs:  # the same fitted processors as the first run, set up for bf16
            bf16 = {"precision": "bf16", "fsdp": {"param_dtype": "bfloat16", "reduce_dtype": "float32"}}
            copy_setup(runs["fp32"], out, **bf16)
        code, output = run_two_processes(
            ["-m", "mmssl.cli", "train", str(recipe), "train.steps=2", "train.batch_size=16", "train.strategy=fsdp",
             *extra, "-o", str(out), *(["--resume"] if runs else []), "--no-eval"]
        )  # fmt: skip
        assert code == 0, output
        runs[name] = out
    losses = {n: json.loads((o / "metrics.jsonl").read_text().splitlines()[0])["loss"] for n, o in runs.items()}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)  # bf16 keeps 8 bits of mantissa
    weights = load_file(str(runs["bf16"] / "model.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
