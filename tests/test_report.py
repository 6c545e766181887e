"""``mmssl report``: every plot is written and non-empty, the page is self-contained and shows eval.json's numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.report import eval_numbers_in

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
PLOTS = ("loss", "schedule", "monitors", "evaluation", "embedding_map", "retrieval_image_to_text",
         "retrieval_text_to_image")  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("report") / "run"
    overrides = ["train.steps=4", "train.monitor_every=2", "train.monitor_rows=32"]
    overrides.append("modalities.image.options.encoder=vit")  # the card test exports it to timm
    result = CliRunner().invoke(app, ["train", str(TINY), *overrides, "--output", str(run)])
    assert result.exit_code == 0, result.output
    return run, result.output


def test_train_writes_the_report_and_prints_its_path(trained: tuple[Path, str]) -> None:
    run, output = trained
    assert f"wrote report {run / 'report' / 'report.html'} ({len(PLOTS)} plots)" in output


def test_every_plot_exists_is_a_non_empty_png_and_is_embedded(trained: tuple[Path, str]) -> None:
    run, _ = trained
    page = (run / "report" / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(PLOTS)
    for name in PLOTS:
        with Image.open(run / "report" / f"{name}.png") as image:
            image.load()
            width, height = image.size
            assert width > 200 and height > 200, name
            colours = image.convert("L").getextrema()
            assert colours[0] < colours[1], f"{name}.png is blank"
    assert "http://" not in page and "https://" not in page  # opens offline: nothing to fetch


def test_the_page_shows_exactly_the_numbers_of_eval_json(trained: tuple[Path, str]) -> None:
    run, _ = trained
    evaluation = json.loads((run / "eval.json").read_text())
    shown = eval_numbers_in((run / "report" / "report.html").read_text())
    kinds = {"trained": "", "random_init": "_random_init", "raw": "_raw"}
    expected = {}
    for (metric, kind), value in shown.items():
        if kind == "chance":
            family = metric.split("_top")[0]
            expected[(metric, kind)] = evaluation[f"{family}_chance"]
        else:
            expected[(metric, kind)] = evaluation[metric + kinds[kind]]
        assert value == expected[(metric, kind)], (metric, kind)
    # every number of eval.json appears on the page
    assert set(expected.values()) == set(evaluation.values())
    assert {("knn_top1", "trained"), ("knn_top1", "raw"), ("zero_shot_top1", "chance")} <= set(shown)


def test_report_command_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not an mmssl run folder" in result.output


def test_export_card_carries_report_plots_and_evaluation_table(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    out = tmp_path / "timm"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "timm", "--output", str(out)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", card)
    assert {"report/evaluation.png", "report/loss.png", "report/monitors.png", "report/embedding_map.png"} <= set(links)
    for link in links:
        assert (out / link).read_bytes() == (run / link).read_bytes()
    evaluation = json.loads((run / "eval.json").read_text())
    assert "| metric | trained | random init | raw input | chance |" in card
    row = next(line for line in card.splitlines() if line.startswith("| knn_top1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = [evaluation[k] for k in ("knn_top1", "knn_top1_random_init", "knn_top1_raw", "knn_chance")]
    assert [float(c) for c in cells[1:]] == pytest.approx(expected, abs=5e-5)  # shown with 4 decimals
