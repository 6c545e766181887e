"""Training on partially paired rows: absent modalities, pair objectives without pairs, DDP lock-step."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tolerances import F32_SCALAR
from torchrun import run_two_processes

from mmssl.train.step import ModalityAbsent, StepContext

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "dist_scripts" / "partial_pairs.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when the script runs: its helpers (dist_common) sit beside it
_spec = importlib.util.spec_from_file_location("partial_pairs", SCRIPT)
pp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pp)


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def batch_of(layout):
    return pp.make_batch(layout, 0, slice(0, len(layout)))


def test_absent_modality_embeds_to_zero_rows_attached_to_its_parameters() -> None:
    module = pp.build(with_norm=False, gather=False)
    ctx = StepContext(module.model, batch_of([{pp.IM, pp.T}, {pp.T}]), module.processors)
    assert ctx.has("image") and ctx.has("text") and not ctx.has("audio")
    with pytest.raises(ModalityAbsent, match="no row with modality 'audio'"):
        ctx.encode("audio")
    with pytest.raises(KeyError, match="no 'view0' view"):
        ctx.inputs("image", "view0")
    emb = ctx.embed("audio")
    assert emb.shape == (0, 4) and emb.requires_grad
    (emb.sum() + ctx.embed("image").sum()).backward()
    audio = [*module.model.encoders["audio"].parameters(), *module.model.projections["audio"].parameters()]
    assert all(p.grad is not None and not p.grad.any() for p in audio)  # took part, with a zero gradient
    assert module.model.encoders["image"].layer.weight.grad.abs().sum() > 0


def test_clip_without_pairs_is_zero_and_reaches_every_parameter() -> None:
    module = pp.build(with_norm=False, gather=False)
    terms = module(batch_of([{pp.IM}, {pp.T}, {pp.IM}, {pp.A}]))  # no image-text and no audio-text pair
    assert float(terms["loss"].detach()) == 0.0
    assert float(terms["clip/pairs"]) == 0.0 and float(terms["clip2/pairs"]) == 0.0
    terms["loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())


def test_objective_without_partial_support_is_skipped_when_its_modality_is_absent() -> None:
    module = pp.build(with_norm=True, gather=False)
    terms = module(batch_of([{pp.IM, pp.T}, {pp.IM, pp.T}, {pp.T}]))  # no audio
    assert "norm/loss" not in terms and "clip/loss" in terms
    terms["loss"].backward()
    assert module.objectives["norm"].scale.grad is not None  # DDP sees it used
    total = float(terms["clip/loss"].detach()) + float(terms["clip2/loss"].detach())
    assert float(terms["loss"].detach()) == pytest.approx(total, **F32_SCALAR)
    with_audio = module(batch_of([{pp.IM, pp.T}, {pp.A, pp.T}, {pp.A}]))
    assert float(with_audio["norm/loss"].detach()) > 0


def test_two_processes_with_missing_pairs_match_one_process(tmp_path: Path) -> None:
    code, output = run_two_processes([str(SCRIPT), str(tmp_path)], timeout=150)
    assert code == 0, output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [] and report["world_size"] == 2, output
    for name in pp.STEPS:
        entry = report[name]
        assert entry["loss_diff"] < 1e-9 and entry["grad_diff"] < 1e-9, (name, output)
        assert entry["grad_norm"] > 1e-3, (name, output)
    assert report["no_audio_text_anywhere"]["audio_text_pairs"] == 0.0
    assert report["norm_ran"]["rank1_no_audio"] == [False, False]  # skipped on both ranks together
    assert report["norm_ran"]["fully_paired"] == [True, True]


def test_pair_embeddings_have_one_dtype_under_autocast() -> None:
    """Every process must gather one dtype, also the one without rows of a modality (no encoder output)."""
    from mmssl.objectives.alignment import paired_embeddings

    torch.set_default_dtype(torch.float32)
    module = pp.build(with_norm=False, gather=False)
    batch = batch_of([{pp.IM, pp.T}, {pp.T}])
    for views in batch.inputs.values():
        for rows in views.values():
            rows.data = rows.data.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = StepContext(module.model, batch, module.processors)
        present = paired_embeddings(ctx, [("image", "clean"), ("text", "clean")])
        absent = paired_embeddings(ctx, [("audio", "clean"), ("text", "clean")])
    assert ctx.embed("image").dtype == torch.bfloat16  # what the encoder gives under autocast
    assert [t.dtype for t in (*present, *absent)] == [torch.float32] * 4
    assert [t.shape[0] for t in (*present, *absent)] == [1, 1, 0, 0]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_binding_recipe_trains_under_torchrun_with_absent_modalities(tmp_path: Path) -> None:
    """`mmssl train` with two processes on the binding recipe, shrunk so that images are rare: steps where no
    process, or only one, has an image; MAE on images is skipped on both processes together."""
    from mmssl.recipe import load_yaml

    tree = load_yaml(REPO / "recipes" / "binding" / "digits_image_audio_text.yaml")
    voices = {"variants": ["", "f2"], "speeds": [160], "pitches": [40], "asterisk_digits": False}
    tree["data"] = {
        "train": {
            "source": "concat",
            "parts": [
                {"source": "sklearn_digits", "split": "train", "limit": 2},
                {"source": "spoken_digits", "split": "train", "voices": ["en-us"], "test_voices": [], **voices},
            ],
        },
    }
    tree["evaluations"] = []
    tree["train"].update(steps=4, batch_size=5, warmup_steps=1, log_every=1, num_workers=0)
    for modality in ("image", "audio", "text"):
        tree["modalities"][modality]["options"]["depth"] = 1
    tree["objectives"].append(
        {"name": "mae", "modality": "image", "mask_ratio": 0.5, "decoder_width": 16, "decoder_depth": 1}
    )
    recipe = tmp_path / "binding.yaml"
    recipe.write_text(yaml.safe_dump(tree, sort_keys=False))
    code, output = run_two_processes(
        ["-m", "mmssl.cli", "train", str(recipe), "-o", str(tmp_path / "run")],
        timeout=240,
        env={"MMSSL_CACHE": str(tmp_path / "cache")},
    )
    assert code == 0, output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    image_pairs = [r["clip/pairs"] for r in records]  # mean over the two processes
    assert 0.0 in image_pairs and 0.5 in image_pairs, image_pairs  # none anywhere; one process only
    for record in records:
        assert record["clip/pairs"] + record["clip2/pairs"] == 5  # every row is in one pair
        if record["clip/pairs"] in (0.0, 0.5):  # a process without images: skipped on both
            assert "mae/loss" not in record, record
    assert any("mae/loss" in r for r in records), records  # both processes had an image (seed 0: step 3)
