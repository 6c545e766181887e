"""Training, checkpoints and resume: a run stopped at a checkpoint and resumed ends bit-identical to one that was not.

The tiny recipe trains CLIP + SimCLR + MAE + MLM with dropout in the text encoder, so the result depends on the data
order, the augmentations, the random masks, the dropout noise (global RNG), AdamW's state and the schedule.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tolerances import F32, F32_SCALAR

from mmssl.build import (
    Plan,
    build_model,
    build_train_module,
    load_processors,
    load_source,
    probe_batches,
)
from mmssl.compiler import compile_recipe
from mmssl.data.sampler import ResumableBatchSampler
from mmssl.recipe import load_yaml
from mmssl.train import checkpoint as ckpt
from mmssl.train.integrity import CorruptCheckpointError
from mmssl.train.optim import build_optimizer
from mmssl.train.schedule import lr_multiplier
from mmssl.train.trainer import RunExistsError, train

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
STEPS = 6


@pytest.fixture(scope="module")
def plan() -> Plan:
    plan = compile_recipe(TINY)
    assert plan.recipe.train.steps == STEPS and plan.recipe.train.checkpoint_every == 2
    assert plan.recipe.modalities["text"].options["dropout"] > 0  # RNG state must matter
    return plan


@pytest.fixture(scope="module")
def run_a(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("run") / "a"
    result = train(plan, out)
    assert result.finished and result.step == STEPS
    return out


@pytest.fixture(scope="module")
def stopped(plan: Plan, run_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed right after its step-4 checkpoint (tests copy it before resuming)."""
    out = tmp_path_factory.mktemp("run") / "stopped"
    # A resumed run reuses its folder's processors. Give this run the same ones as run A: the WordPiece trainer of
    # `tokenizers` orders tokens of equal frequency differently from process to process, so two *fresh* runs
    # may number the same vocabulary differently.
    # Copying run A's setup (processors, labels, recipe, run.json) makes a run with no checkpoint yet, which
    # --resume starts from step 0 with that setup.
    out.mkdir()
    shutil.copytree(run_a / "processors", out / "processors")
    for name in ("labels.json", "recipe.yaml", "run.json"):
        shutil.copy(run_a / name, out / name)
    result = train(plan, out, resume=True, stop_after=4)
    assert not result.finished and result.step == 4
    return out


def resume_copy(stopped: Path, dest: Path) -> Path:
    shutil.copytree(stopped, dest)
    return dest


def tensors_equal(x: Path, y: Path) -> list[str]:
    """Names of the tensors that differ (or exist in only one file)."""
    a, b = load_file(str(x)), load_file(str(y))
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


def metrics(run: Path) -> dict[int, dict[str, Any]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r.pop("step"): {k: v for k, v in r.items() if k != "samples_per_s"} for r in records}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_uninterrupted_run_writes_its_folder(run_a: Path) -> None:
    assert (run_a / "model.safetensors").is_file()
    assert (run_a / "recipe.yaml").is_file() and (run_a / "processors" / "text" / "tokenizer.json").is_file()
    checkpoints = run_a / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000004", "step_0000006"]  # keep 2
    assert (checkpoints / "latest").read_text().strip() == "step_0000006"
    assert json.loads((checkpoints / "step_0000006" / "trainer.json").read_text()) == {"step": 6}
    assert (checkpoints / "step_0000006" / "rng_rank0.pt").is_file()
    assert sorted(metrics(run_a)) == list(range(1, STEPS + 1))
    # The final weights are the model part of the last checkpoint.
    final = load_file(str(run_a / "model.safetensors"))
    last = load_file(str(checkpoints / "step_0000006" / "model.safetensors"))
    assert set(last) == {f"model.{k}" for k in final} | {k for k in last if k.startswith("objectives.")}
    assert all(torch.equal(v, last[f"model.{k}"]) for k, v in final.items())


def test_stop_after_leaves_a_resumable_checkpoint(stopped: Path) -> None:
    assert not (stopped / "model.safetensors").exists()
    assert (stopped / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert ckpt.latest_checkpoint(stopped / "checkpoints") == stopped / "checkpoints" / "step_0000004"
    assert sorted(metrics(stopped)) == [1, 2, 3, 4]


def test_resume_is_bit_identical(plan: Plan, run_a: Path, stopped: Path, tmp_path: Path) -> None:
    run_b = resume_copy(stopped, tmp_path / "b")
    result = train(plan, run_b, resume=True)
    assert result.finished and result.step == STEPS
    assert tensors_equal(run_a / "model.safetensors", run_b / "model.safetensors") == []
    last = Path("checkpoints") / "step_0000006"
    assert tensors_equal(run_a / last / "model.safetensors", run_b / last / "model.safetensors") == []
    state_a = torch.load(run_a / last / "state.pt", weights_only=True)
    state_b = torch.load(run_b / last / "state.pt", weights_only=True)
    for index, entry in state_a["optimizer"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, state_b["optimizer"]["state"][index][key]), (index, key)
    assert state_a["scheduler"] == state_b["scheduler"]

    ma, mb = metrics(run_a), metrics(run_b)
    assert sorted(mb) == list(range(1, STEPS + 1))
    for step in (5, 6):
        assert mb[step] == ma[step], step
        assert mb[step]["loss"] == ma[step]["loss"] and "mlm/loss" in mb[step]


def test_resume_without_rng_state_differs(plan: Plan, run_a: Path, stopped: Path, tmp_path: Path) -> None:
    """Negative control: the RNG state in the checkpoint is what makes the resume exact (dropout, masks)."""
    run_c = resume_copy(stopped, tmp_path / "c")
    (run_c / "checkpoints" / "step_0000004" / "rng_rank0.pt").unlink()
    # Without the manifest (a checkpoint of an older version), or the missing file would make resume fall back.
    (run_c / "checkpoints" / "step_0000004" / "manifest.json").unlink()
    train(plan, run_c, resume=True)
    assert tensors_equal(run_a / "model.safetensors", run_c / "model.safetensors") != []
    assert metrics(run_c)[5]["loss"] != metrics(run_a)[5]["loss"]


def test_stale_staging_folders_do_not_break_resume(plan: Plan, run_a: Path, stopped: Path, tmp_path: Path) -> None:
    run_d = resume_copy(stopped, tmp_path / "d")
    root = run_d / "checkpoints"
    for stale in (root / ".step_0000004.tmp", root / ".step_0000006.tmp"):  # killed while writing
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"\x00garbage" * 100)
        (stale / "state.pt").write_bytes(b"not a pickle")
        (stale / "trainer.json").write_text('{"step": 99}')
        (stale / "rng_rank0.pt").write_text("junk")
    assert ckpt.latest_checkpoint(root) == root / "step_0000004"
    result = train(plan, run_d, resume=True)
    assert result.finished
    assert tensors_equal(run_a / "model.safetensors", run_d / "model.safetensors") == []
    assert not (root / ".step_0000006.tmp").exists()  # reused and renamed into place
    assert json.loads((root / "step_0000006" / "trainer.json").read_text()) == {"step": 6}
    assert (root / "latest").read_text().strip() == "step_0000006"


def test_resume_from_an_older_checkpoint(plan: Plan, run_a: Path, stopped: Path, tmp_path: Path) -> None:
    """Killed between renaming step 4 into place and updating `latest`: resuming from step 2 is still exact."""
    run_e = resume_copy(stopped, tmp_path / "e")
    ckpt.atomic_write_text(run_e / "checkpoints" / "latest", "step_0000002")
    train(plan, run_e, resume=True)
    assert tensors_equal(run_a / "model.safetensors", run_e / "model.safetensors") == []
    assert sorted(metrics(run_e)) == list(range(1, STEPS + 1))


def test_latest_checkpoint_fallbacks(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) is None
    for step in (2, 10, 4):
        (root / ckpt.checkpoint_name(step)).mkdir(parents=True)
    (root / ".step_0000012.tmp").mkdir()
    assert ckpt.latest_checkpoint(root) == root / "step_0000010"  # no pointer: highest complete one
    (root / "latest").write_text("step_0000004\n")
    assert ckpt.latest_checkpoint(root) == root / "step_0000004"
    (root / "latest").write_text("step_0000099")  # dangling pointer
    assert ckpt.latest_checkpoint(root) == root / "step_0000010"


def test_existing_run_without_resume_is_refused(plan: Plan, run_a: Path, stopped: Path, tmp_path: Path) -> None:
    for source in (run_a, stopped):
        folder = shutil.copytree(source, tmp_path / source.name)
        before = snapshot(folder)
        with pytest.raises(RunExistsError, match="already holds a run; pass --resume"):
            train(plan, folder)
        assert snapshot(folder) == before


def test_resume_without_checkpoint_is_an_error(plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint in"):
        train(plan, tmp_path / "fresh", resume=True)
    assert not (tmp_path / "fresh" / "checkpoints").exists()


# Loading checkpoints.


def fresh_training_state(plan: Plan, processors_dir: Path) -> tuple[torch.nn.Module, Any, Any]:
    processors = load_processors(plan, processors_dir)
    torch.manual_seed(1234)  # different weights from the run's
    model = build_model(plan, processors)
    module = build_train_module(plan, model, processors, probe_batches(plan, processors, load_source(plan, "train")))
    spec = plan.recipe.train
    optimizer = build_optimizer(module, spec.lr, spec.weight_decay, spec.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(spec.schedule, spec.steps, spec.warmup_steps)
    )
    return module, optimizer, scheduler


def test_load_checkpoint_uses_weights_only(plan: Plan, run_a: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, optimizer, scheduler = fresh_training_state(plan, run_a / "processors")
    found = run_a / "checkpoints" / "step_0000006"
    calls: list[tuple[str, Any]] = []
    real_load = torch.load

    def spy(f: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((Path(f).name, kwargs.get("weights_only")))
        assert kwargs.get("weights_only") is True, f"torch.load({f}) without weights_only=True"
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    step = ckpt.load_checkpoint(found, module, optimizer, scheduler, rank=0)
    assert step == 6
    assert calls == [("state.pt", True), ("rng_rank0.pt", True)]

    saved = load_file(str(found / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    assert all(int(s["step"]) == 6 for s in optimizer.state_dict()["state"].values())
    assert scheduler.last_epoch == 6
    rng = real_load(found / "rng_rank0.pt", weights_only=True)
    assert torch.equal(torch.get_rng_state(), rng["torch"])


MARKER: list[str] = []


def _side_effect(text: str) -> str:
    MARKER.append(text)
    return text


class Payload:
    """Unpickling this runs `_side_effect`; a weights_only loader must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_side_effect, ("ran",))


def test_checkpoint_with_pickled_objects_is_refused(plan: Plan, run_a: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(run_a / "checkpoints" / "step_0000006", tmp_path / "step_0000006")
    torch.save({"optimizer": Payload(), "scheduler": {}}, folder / "state.pt")
    # Control: a plain unpickler would run the payload.
    MARKER.clear()
    torch.load(folder / "state.pt", weights_only=False)
    assert MARKER == ["ran"]
    MARKER.clear()
    module, optimizer, scheduler = fresh_training_state(plan, run_a / "processors")
    with pytest.raises(CorruptCheckpointError, match="state.pt is corrupt: it holds pickled objects") as err:
        ckpt.load_checkpoint(folder, module, optimizer, scheduler, rank=0)
    assert err.value.file == folder / "state.pt"
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)  # torch's weights_only unpickler refused it
    assert MARKER == []


# Gradient accumulation.


def test_grad_accum_matches_a_bigger_batch(tmp_path: Path) -> None:
    """batch 16 x grad_accum 2 and batch 32 x grad_accum 1 take the same first step.

    Only MAE, which is a mean over rows with the same number of hidden patches each, so the loss of 32 rows is the
    mean of the losses of its two halves (contrastive losses are not: their negatives depend on the batch). No
    dropout, no random views, and the sampler feeds the same 32 rows in the same order; the random masks come from
    the global RNG, drawn row after row, so they match too. What remains is float rounding: the accumulated gradient
    sums two halves, the big batch sums all rows at once.
    """
    tree = load_yaml(TINY)
    tree["modalities"] = {"image": tree["modalities"]["image"]}
    tree["objectives"] = [
        {
            "name": "mae",
            "modality": "image",
            "mask_ratio": 0.5,
            "decoder_width": 16,
            "decoder_depth": 1,
            "decoder_heads": 2,
        }
    ]
    tree["evaluations"] = []
    tree["train"].update(steps=1, warmup_steps=0, checkpoint_every=0, lr=1e-3)
    assert tree["modalities"]["image"]["options"].get("dropout", 0.0) == 0.0

    seed = tree["seed"]
    small, big = ResumableBatchSampler(256, 16, seed), ResumableBatchSampler(256, 32, seed)
    assert small.batch(0) + small.batch(1) == big.batch(0)

    runs = {}
    for batch_size, grad_accum in ((16, 2), (32, 1)):
        variant = json.loads(json.dumps(tree))
        variant["train"].update(batch_size=batch_size, grad_accum=grad_accum)
        plan = compile_recipe(variant, source="variant", base_dir=TINY.parent)
        out = tmp_path / f"b{batch_size}x{grad_accum}"
        train(plan, out)
        runs[grad_accum] = (load_file(str(out / "model.safetensors")), metrics(out)[1])

    # The initial weights: the trainer seeds, then builds the model from the (deterministic) image processor.
    torch.manual_seed(seed)
    processors = load_processors(plan, tmp_path / "b32x1" / "processors")
    initial = build_model(plan, processors).state_dict()

    (w_accum, m_accum), (w_big, m_big) = runs[2], runs[1]
    # Same loss (mean over micro-batches) and gradient norm (before clipping), up to float rounding.
    assert m_accum["loss"] == pytest.approx(m_big["loss"], **F32_SCALAR)
    assert m_accum["grad_norm"] == pytest.approx(m_big["grad_norm"], rel=1e-4)
    assert m_accum["grad_norm"] > 1e-3
    moved = max((w_big[k] - initial[k]).abs().max().item() for k in w_big)
    assert moved == pytest.approx(1e-3, rel=0.05)  # AdamW's first step moves weights by about lr
    # AdamW's first step is g / (|g| + eps) ~ sign(g), so gradient rounding barely moves it; allow 1 % of lr
    # (observed: a few 1e-8, the rounding of the weights themselves).
    for key in w_big:
        assert torch.allclose(w_accum[key], w_big[key], **F32), key
