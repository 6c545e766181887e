"""The data error policy: a corrupt PNG among Fashion-MNIST images under `data.on_error: skip` and `raise`.

A manifest of real Fashion-MNIST images written as PNG files, one of them replaced by a file that starts like a PNG
and then breaks off. Under `skip` the run trains on, lists the row in `skipped.jsonl`, counts it in
`metrics.jsonl`, and a run stopped and resumed ends bit-identical to an uninterrupted one (replacements are a pure
function of seed, epoch and row); with DataLoader workers the counts reach the training loop; past
`data.max_errors` the run stops with the file and the limit named.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import Plan, compile_recipe
from mmssl.data.errors import DataErrorLimit, DataErrorPolicy, SkippedRow, read_skipped, replacement_row
from mmssl.data.sampler import ResumableBatchSampler
from mmssl.recipe import RecipeError, parse_recipe
from mmssl.train.trainer import train

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
ROWS, BATCH, STEPS, SEED = 40, 8, 6, 5
BATCHES_PER_EPOCH = ROWS // BATCH
# The corrupt row: the first row of micro-batch 4 (step 5), after the step-4 checkpoint, so a run stopped at step 5
# has listed it and must drop it again when resumed from step 4.
BAD = ResumableBatchSampler(ROWS, BATCH, SEED).batch(4)[0][0]

pytestmark = pytest.mark.skipif(not FASHION.is_file(), reason="needs Debian's dataset-fashion-mnist")


def write_manifest(folder: Path, bad_rows: tuple[int, ...] = (BAD,)) -> Path:
    """ROWS Fashion-MNIST training images as PNGs; the rows in ``bad_rows`` get a truncated PNG instead."""
    images = np.frombuffer(gzip.open(FASHION).read(), np.uint8, offset=16).reshape(-1, 28, 28)[:ROWS]
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, image in enumerate(images):
        file = folder / f"img_{i:03d}.png"
        Image.fromarray(image).save(file)
        if i in bad_rows:
            file.write_bytes(file.read_bytes()[:40])  # the signature and header survive, the pixel data does not
        lines.append(json.dumps({"image": file.name, "label": i % 10}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def recipe_tree(manifest: Path, **data: Any) -> dict[str, Any]:
    return {
        "name": "corrupt_png",
        "seed": SEED,
        "data": {"train": {"source": "manifest", "path": str(manifest), "path_columns": ["image"]}, **data},
        "modalities": {
            "image": {
                "options": {
                    "image_size": 28, "patch_size": 7, "channels": 1, "width": 16, "depth": 1, "heads": 2,
                    "stats_samples": ROWS, "crop_scale": [0.5, 1.0],
                }
            }
        },
        "model": {"embed_dim": 8},
        "objectives": [
            {"name": "simclr", "modality": "image", "proj_dim": 8, "hidden_dim": 16},
            {"name": "mae", "modality": "image", "mask_ratio": 0.5, "decoder_width": 8, "decoder_depth": 1,
             "decoder_heads": 2},
        ],
        "train": {"steps": STEPS, "batch_size": BATCH, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2},
    }  # fmt: skip


def make_plan(tree: dict[str, Any]) -> Plan:
    return compile_recipe(tree, source="test", base_dir=Path("."))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def skip_plan(manifest: Path) -> Plan:
    return make_plan(recipe_tree(manifest, on_error="skip", max_errors=3))


@pytest.fixture(scope="module")
def run_a(skip_plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "a"
    assert train(skip_plan, out).finished
    return out


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def expected_skip_steps() -> list[int]:
    """The steps whose batch holds the bad row, from the sampler's order alone."""
    sampler = ResumableBatchSampler(ROWS, BATCH, SEED)
    return [m + 1 for m in range(STEPS) if any(row == BAD for row, _ in sampler.batch(m))]


def test_a_corrupt_png_is_skipped_listed_and_counted(run_a: Path, manifest: Path) -> None:
    steps = expected_skip_steps()
    assert 5 in steps  # BAD was chosen in the batch of step 5
    listed = read_skipped(run_a / "skipped.jsonl")
    # Fitting the image statistics (step 0) met it first, then each batch that held it.
    assert [r.step for r in listed] == [0, *steps]
    for r in listed:
        assert (r.row, r.column, r.origin) == (BAD, "image", str(manifest))
        assert r.file == str((manifest.parent / f"img_{BAD:03d}.png").resolve())
        assert "not an image PIL can read" in r.error
    records = metrics(run_a)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    per_step = [r["skipped_rows"] for r in records]
    assert per_step == [float(steps.count(s)) for s in range(1, STEPS + 1)]
    assert [r["skipped_rows_total"] for r in records] == [1.0 + sum(per_step[: i + 1]) for i in range(STEPS)]
    assert all(r["bad_rows"] == 1.0 for r in records)
    assert (run_a / "model.safetensors").is_file()


def test_the_replacement_is_a_pure_function_of_seed_epoch_and_row() -> None:
    rows = [replacement_row(SEED, epoch, BAD, 1, ROWS)[0] for epoch in range(20)]
    assert rows == [replacement_row(SEED, epoch, BAD, 1, ROWS)[0] for epoch in range(20)]
    assert all(0 <= r < ROWS for r in rows) and len(set(rows)) > 1  # differs between epochs
    first = np.random.default_rng([SEED, 0, BAD, 1]).integers(ROWS)
    assert rows[0] == first


def test_resume_after_a_skip_is_bit_identical(skip_plan: Plan, run_a: Path, tmp_path: Path) -> None:
    """Stopped at step 5 (its skip already listed, the last checkpoint at step 4), then resumed."""
    stopped = tmp_path / "b"
    shutil.copytree(run_a / "processors", stopped / "processors")  # run A's setup: the same fitted statistics
    for name in ("labels.json", "recipe.yaml", "run.json"):
        shutil.copy(run_a / name, stopped / name)
    (stopped / "skipped.jsonl").write_text((run_a / "skipped.jsonl").read_text().splitlines()[0] + "\n")
    result = train(skip_plan, stopped, resume=True, stop_after=5)  # a setup without checkpoint: from step 0
    assert not result.finished and result.step == 5
    assert 5 in [r.step for r in read_skipped(stopped / "skipped.jsonl")]
    with (stopped / "skipped.jsonl").open("a") as handle:
        handle.write('{"step": 6, "row": 1')  # a torn line, as from a run killed while appending
    train(skip_plan, stopped, resume=True)
    a, b = load_file(str(run_a / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (stopped / "skipped.jsonl").read_text() == (run_a / "skipped.jsonl").read_text()
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(run_a)]
    assert [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(stopped)] == strip


def test_skips_in_worker_processes_reach_the_training_loop(manifest: Path, run_a: Path, tmp_path: Path) -> None:
    tree = recipe_tree(manifest, on_error="skip", max_errors=3)
    tree["train"]["num_workers"] = 1
    out = tmp_path / "workers"
    train(make_plan(tree), out)
    assert read_skipped(out / "skipped.jsonl") == read_skipped(run_a / "skipped.jsonl")
    assert [r["skipped_rows"] for r in metrics(out)] == [r["skipped_rows"] for r in metrics(run_a)]
    a, b = load_file(str(run_a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_past_max_errors_the_run_stops_naming_the_file_and_the_limit(tmp_path: Path) -> None:
    sampler = ResumableBatchSampler(ROWS, BATCH, SEED)
    second = sampler.batch(1)[0][0]  # met in step 2
    manifest = write_manifest(tmp_path / "data", bad_rows=(BAD, second))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_tree(manifest, on_error="skip", max_errors=1)))
    # Fitting meets both files (limit 1 passed there): the message names the second one.
    result = CliRunner().invoke(app, ["train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval"])
    assert result.exit_code == 2, result.output
    last = max(BAD, second)
    assert f"img_{last:03d}.png" in result.output and "data.max_errors = 1" in result.output
    assert "Traceback" not in result.output
    assert len(read_skipped(tmp_path / "run" / "skipped.jsonl")) == 2


def test_the_limit_is_checked_during_training(manifest: Path, tmp_path: Path) -> None:
    """With the image statistics given, nothing is read before training: the first batch with the bad row stops
    a run that tolerates no errors."""
    tree = recipe_tree(manifest, on_error="skip", max_errors=0)
    tree["modalities"]["image"]["options"].update(mean=[0.3], std=[0.3])
    with pytest.raises(DataErrorLimit, match=rf"data.max_errors = 0; the last: row {BAD} of .*img_{BAD:03d}.png"):
        train(make_plan(tree), tmp_path / "run")
    assert [r.step for r in read_skipped(tmp_path / "run" / "skipped.jsonl")] == [expected_skip_steps()[0]]


def test_raise_is_the_default_and_names_the_file(manifest: Path, tmp_path: Path) -> None:
    plan = make_plan(recipe_tree(manifest))
    assert plan.recipe.data.on_error == "raise"
    with pytest.raises(ValueError, match=rf"img_{BAD:03d}.png is not an image PIL can read"):
        train(plan, tmp_path / "run")
    assert not (tmp_path / "run" / "skipped.jsonl").exists() or not read_skipped(tmp_path / "run" / "skipped.jsonl")


def test_the_policy_keys_are_validated(manifest: Path) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(recipe_tree(manifest, on_error="ignore", max_errors=-1), "bad.yaml")
    paths = [path for path, _ in err.value.errors]
    assert paths == ["data.on_error", "data.max_errors"]
    plan = make_plan(recipe_tree(manifest, on_error="skip", max_errors=7))
    assert list(plan.recipe.data) == ["train"] and plan.recipe.data.max_errors == 7


def test_policy_counts_distinct_rows_and_appends(tmp_path: Path) -> None:
    log = tmp_path / "skipped.jsonl"
    policy = DataErrorPolicy("skip", max_errors=2, log=log)
    hit = [SkippedRow(1, 4, "m.jsonl", "image", "a.png", "bad"), SkippedRow(1, 9, "m.jsonl", "image", None, "bad")]
    policy.record(hit)
    policy.record([hit[0].at_step(3)])  # the same row again, a later epoch: counted, not a new bad row
    assert policy.metrics() == {"skipped_rows": 3.0, "skipped_rows_total": 3.0, "bad_rows": 2.0}
    assert policy.metrics()["skipped_rows"] == 0.0
    with pytest.raises(DataErrorLimit, match="3 rows could not be read, more than data.max_errors = 2"):
        policy.record([SkippedRow(4, 11, "m.jsonl", "image", "c.png", "truncated")])
    assert [r.row for r in read_skipped(log)] == [4, 9, 4, 11]
    again = DataErrorPolicy("skip", 2)
    again.restore(log, up_to_step=1)
    assert (again.total, len(again.bad)) == (2, 2)


@pytest.mark.slow
def test_two_processes_sum_their_skips(manifest: Path, tmp_path: Path) -> None:
    """Under torchrun each process reads its own rows; the skips of both are listed once, in rank order, and the
    counts in metrics.jsonl are their sums."""
    from torchrun import run_two_processes

    recipe = tmp_path / "recipe.yaml"
    tree = recipe_tree(manifest, on_error="skip", max_errors=3)
    tree["train"].update(steps=4, checkpoint_every=0)
    recipe.write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    code, output = run_two_processes(["-m", "mmssl.cli", "train", str(recipe), "--output", str(out), "--no-eval"])
    assert code == 0, output
    samplers = [ResumableBatchSampler(ROWS, BATCH, SEED, rank, 2) for rank in (0, 1)]
    steps = [m + 1 for m in range(4) for s in samplers for row, _ in s.batch(m) if row == BAD]
    assert steps  # the bad row is met at least once in 4 steps of 2 x 8 rows of 40
    assert [r.step for r in read_skipped(out / "skipped.jsonl")] == [0, *steps]
    records = metrics(out)
    assert [r["skipped_rows"] for r in records] == [float(steps.count(s)) for s in range(1, 5)]
    assert records[-1]["skipped_rows_total"] == 1.0 + len(steps)


def test_evaluations_leave_out_unreadable_rows_under_skip(run_a: Path, manifest: Path) -> None:
    """kNN on the manifest with the corrupt PNG: under skip it scores the 39 readable rows; under raise the
    evaluation fails with the file named while eval.json is still written."""
    from mmssl.run import evaluate, load_run

    labelled = {"source": "manifest", "path": str(manifest), "path_columns": ["image"], "label_column": "label"}
    knn = [{"name": "knn", "modality": "image", "bank": "test", "query": "test", "k": 3, "baselines": []}]
    overrides = [f"data.test={json.dumps(labelled)}", f"evaluations={json.dumps(knn)}"]
    report = evaluate(load_run(run_a, overrides=overrides))
    assert report.errors == {} and report.skipped_rows == {"test": 1}
    top1 = report.results["knn_top1"]
    assert top1 * (ROWS - 1) == pytest.approx(round(top1 * (ROWS - 1)))  # an accuracy over 39 rows
    saved = json.loads((run_a / "eval.json").read_text())
    assert saved["skipped_rows"] == {"test": 1} and saved["knn_top1"] == top1
    report = evaluate(load_run(run_a, overrides=[*overrides, "data.on_error=raise"]))
    assert report.results == {} and f"img_{BAD:03d}.png" in report.errors["knn"]
    assert "knn" in json.loads((run_a / "eval.json").read_text())["errors"]
    (run_a / "eval.json").unlink()


def test_monitors_hold_only_readable_rows_under_skip(manifest: Path, tmp_path: Path) -> None:
    tree = recipe_tree(manifest, on_error="skip", max_errors=3)
    tree["train"].update(steps=1, monitor_every=1, monitor_rows=ROWS, checkpoint_every=0)
    out = tmp_path / "monitored"
    assert train(make_plan(tree), out).finished
    record = metrics(out)[0]  # the corrupt row among the held ones did not stop the monitors
    assert 1.0 <= record["monitor/image/rankme"] <= 16.0, record  # of the pooled width-16 features


@pytest.mark.slow
def test_kill_9_after_a_skip_then_resume_is_bit_identical(manifest: Path, tmp_path: Path) -> None:
    """Fault injection: `mmssl train` killed with SIGKILL after the step that skipped the corrupt row, resumed
    with --resume, ends with the weights and the skipped.jsonl of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tree = recipe_tree(manifest, on_error="skip", max_errors=3)
    tree["train"].update(steps=14, checkpoint_every=3)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mmssl.cli", "train", str(recipe), "--output", str(out), "--no-eval", *extra]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(command(whole), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [r.step for r in read_skipped(killed / "skipped.jsonl")]
        if 5 in steps:  # step 5 met the corrupt row; the last checkpoint is step 3
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert subprocess.run(command(killed, "--resume"), env=env, capture_output=True).returncode == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (killed / "skipped.jsonl").read_text() == (whole / "skipped.jsonl").read_text()
    assert len(read_skipped(whole / "skipped.jsonl")) >= 3  # fitting, step 5 and a later epoch
