"""``train.report_to``: metrics, the recipe and eval results reach a local MLflow file store and an offline wandb
run (read back here with mlflow's client and by parsing wandb's record log), and TensorBoard still gets events."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmssl.cli import app

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trackers") / "run"
    overrides = ["train.steps=3", "train.report_to=[tensorboard, wandb, mlflow]"]
    result = CliRunner().invoke(app, ["train", str(TINY), *overrides, "--no-report", "--output", str(run)])
    assert result.exit_code == 0, result.output
    return run


def logged_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_mlflow_file_store_holds_metrics_recipe_and_eval(tracked: Path) -> None:
    from mlflow.tracking import MlflowClient

    ids = json.loads((tracked / "trackers.json").read_text())
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tracked / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(logged_losses(tracked))
    assert run.data.params["train.steps"] == "3" and run.data.params["name"] == "tiny_image_text"
    evaluation = json.loads((tracked / "eval.json").read_text())
    assert {k.removeprefix("eval/"): v for k, v in run.data.metrics.items() if k.startswith("eval/")} == evaluation


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a wandb ``.wandb`` file: a LevelDB-style log (7-byte header ``:W&B``, 32 KiB blocks, records
    split into FULL / FIRST / MIDDLE / LAST chunks behind ``<checksum u32, length u16, type u8>`` headers)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind in (2, 3):
            pending = chunk if kind == 2 else pending + chunk
        elif kind == 4:
            yield pending + chunk


def key(item: object) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_metrics_recipe_and_eval(tracked: Path) -> None:
    from wandb.proto import wandb_internal_pb2

    ids = json.loads((tracked / "trackers.json").read_text())
    files = sorted((tracked / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    assert files, "no offline wandb run in the run folder"
    history, summary, config = {}, {}, {}
    for file in files:
        for raw in wandb_records(file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {key(i): json.loads(i.value_json) for i in record.history.item}
                if "loss" in items:
                    history[items["_step"]] = items["loss"]
            elif kind == "summary":
                summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "config":
                config.update({key(i): json.loads(i.value_json) for i in record.config.update})
    assert history == pytest.approx(logged_losses(tracked))
    assert config["train.steps"] == 3 and config["name"] == "tiny_image_text"
    evaluation = json.loads((tracked / "eval.json").read_text())
    assert {k.removeprefix("eval/"): v for k, v in summary.items() if k.startswith("eval/")} == evaluation


def test_tensorboard_events_are_written(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tb" / "tiny_image_text"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("loss")}
    assert losses == pytest.approx(logged_losses(tracked))
