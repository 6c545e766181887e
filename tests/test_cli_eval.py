"""The command line (train, eval, embed, modalities) on the tiny recipe, and the k-NN and zero-shot evaluators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tolerances import F32
from torch import nn
from typer.testing import CliRunner

from mmssl.build import load_source
from mmssl.cli import app
from mmssl.data.sources import Source
from mmssl.eval.base import EvalContext
from mmssl.eval.embed import embed_values
from mmssl.eval.knn import knn_predict
from mmssl.eval.zero_shot import ZeroShotOptions, run_zero_shot
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.run import load_run

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
TEST_ROWS = 64  # data.test.limit of the tiny recipe
METRICS = ("knn_top1", "knn_top1_random_init", "knn_top1_raw", "zero_shot_top1", "zero_shot_top1_random_init")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(app, ["train", str(TINY), "train.steps=3", "--output", str(run)])
    assert result.exit_code == 0, result.output
    return run, result.output


def read_eval(run: Path) -> dict[str, float]:
    return json.loads((run / "eval.json").read_text())


# Training and evaluation through the CLI.


def test_train_writes_eval_json(trained: tuple[Path, str]) -> None:
    run, output = trained
    results = read_eval(run)
    for key in METRICS:
        value = results[key]
        assert isinstance(value, float) and 0.0 <= value <= 1.0, (key, value)
        # An accuracy over the 64 test rows.
        assert value * TEST_ROWS == pytest.approx(round(value * TEST_ROWS)), (key, value)
        assert f"{key:32s} {value:.4f}" in output
    assert results["knn_chance"] == results["zero_shot_chance"] == pytest.approx(0.1)
    assert f"wrote {run / 'eval.json'}" in output
    assert (run / "model.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def numpy_knn(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray, k: int, t: float) -> np.ndarray:
    """Brute force: cosine similarity, the k most similar bank rows, votes weighted by exp(sim / t)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    preds = []
    for q in query:
        sims = bank @ q
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(bank_labels.max() + 1)
        for i in top:
            votes[bank_labels[i]] += np.exp(sims[i] / t)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def test_raw_pixel_baseline_matches_a_numpy_knn(trained: tuple[Path, str]) -> None:
    """knn_top1_raw recomputed from the pixels, the saved normalisation and a brute-force k-NN."""
    run, _ = trained
    stats = json.loads((run / "processors" / "image" / "image.json").read_text())
    plan = load_run(run).plan
    knn = plan.recipe.evaluations[0]
    assert (knn["name"], knn["bank"], knn["query"]) == ("knn", "train", "test")

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = load_source(plan, split).rows
        pixels = np.stack([r["image"] for r in rows]).reshape(len(rows), -1).astype(np.float64) / 255.0
        return (pixels - stats["mean"][0]) / stats["std"][0], np.array([r["label"] for r in rows])

    (bank, bank_labels), (query, query_labels) = features("train"), features("test")
    assert len(bank) == 256 and len(query) == TEST_ROWS
    pred = numpy_knn(bank, bank_labels, query, k=knn["k"], t=0.07)
    assert read_eval(run)["knn_top1_raw"] == pytest.approx(float((pred == query_labels).mean()), abs=1e-9)


def test_eval_command_rewrites_eval_json(trained: tuple[Path, str]) -> None:
    run, _ = trained
    before = read_eval(run)
    (run / "eval.json").write_text("{}")
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    assert read_eval(run) == before  # deterministic, including the random-init baselines
    assert f"wrote {run / 'eval.json'}" in result.output


def test_eval_command_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an mmssl run folder" in result.output


def test_train_into_an_existing_run_is_refused(trained: tuple[Path, str]) -> None:
    run, _ = trained
    weights = (run / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["train", str(TINY), "train.steps=3", "--output", str(run)])
    assert result.exit_code == 2
    assert "already holds a run" in result.output
    assert (run / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(("features", "width"), [("projected", 16), ("pooled", 32)])
def test_embed_command(trained: tuple[Path, str], tmp_path: Path, features: str, width: int) -> None:
    run, _ = trained
    out = tmp_path / "emb.safetensors"
    args = ["embed", str(run), "--modality", "image", "--split", "test", "-o", str(out), "--features", features]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = load_file(str(out))
    assert saved["embeddings"].shape == (TEST_ROWS, width)
    assert saved["embeddings"].dtype == torch.float32
    assert saved["index"].tolist() == list(range(TEST_ROWS))
    loaded = load_run(run)
    rows = load_source(loaded.plan, "test").rows
    assert saved["labels"].tolist() == [r["label"] for r in rows]
    expected = embed_values(loaded.model, "image", loaded.processors["image"], [r["image"] for r in rows], features)
    assert torch.allclose(saved["embeddings"], expected, **F32)
    if features == "projected":
        assert torch.allclose(saved["embeddings"].norm(dim=1), torch.ones(TEST_ROWS), atol=1e-5)
    assert f"wrote ({TEST_ROWS}, {width}) {features} embeddings of test/image" in result.output


def test_tokens_are_each_rows_token_grid(trained: tuple[Path, str], tmp_path: Path) -> None:
    """``--features tokens``: row i is encoder tokens of image i alone, [T, D] flattened in token order."""
    run, _ = trained
    out = tmp_path / "tokens.safetensors"
    args = ["embed", str(run), "--modality", "image", "--split", "test", "-o", str(out), "--features", "tokens"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = load_file(str(out))["embeddings"]
    loaded = load_run(run)
    processor, model = loaded.processors["image"], loaded.model.eval()
    rows = load_source(loaded.plan, "test").rows
    with torch.no_grad():
        for i in (0, 17, TEST_ROWS - 1):  # one row at a time: nothing depends on the batch
            tokens = model.encode("image", processor.collate([processor.prepare(processor.decode(rows[i]["image"]))]))
            assert tokens.tokens.shape[1] > 1
            assert torch.allclose(saved[i], tokens.tokens[0].reshape(-1), **F32)
    assert saved.shape == (TEST_ROWS, tokens.tokens.shape[1] * tokens.tokens.shape[2])


def test_knn_on_tokens_scores_the_token_grid(trained: tuple[Path, str]) -> None:
    run, _ = trained
    result = CliRunner().invoke(app, ["eval", str(run), "evaluations.0.features=tokens"])
    assert result.exit_code == 0, result.output
    loaded = load_run(run)
    values = {s: [r["image"] for r in load_source(loaded.plan, s).rows] for s in ("train", "test")}
    labels = {s: torch.tensor([r["label"] for r in load_source(loaded.plan, s).rows]) for s in ("train", "test")}
    grid = {s: embed_values(loaded.model, "image", loaded.processors["image"], v, "tokens") for s, v in values.items()}
    expected = (knn_predict(grid["train"], labels["train"], grid["test"], k=5) == labels["test"]).float().mean()
    assert read_eval(run)["knn_top1"] == pytest.approx(float(expected), abs=0.5 / TEST_ROWS)


def test_tokens_of_padded_text_are_refused(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    out = tmp_path / "text_tokens.safetensors"
    result = CliRunner().invoke(app, ["embed", str(run), "--modality", "text", "-o", str(out), "--features", "tokens"])
    assert result.exit_code != 0
    assert "features: tokens needs rows of one token count" in result.output, result.output
    assert not out.exists()


def test_embed_text_of_the_train_split(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    out = tmp_path / "text.safetensors"
    result = CliRunner().invoke(app, ["embed", str(run), "--modality", "text", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = load_file(str(out))
    assert saved["embeddings"].shape == (256, 32)  # pooled by default: the text encoder's width, as kNN scores
    assert list(safetensors_header(out)) == ["embeddings", "index", "labels"]  # the embeddings come first


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor name -> entry, in the order of their bytes in the file (safetensors format: u64 size + JSON)."""
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    header.pop("__metadata__", None)
    return dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))


def test_embed_unknown_modality(trained: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(app, ["embed", str(run), "--modality", "audio", "-o", str(out)])
    assert result.exit_code == 2
    assert "modality 'audio' is not in the run's recipe" in result.output
    assert not out.exists()


def test_modalities_command() -> None:
    result = CliRunner().invoke(app, ["modalities"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "views, masking (continuous), pairing" in lines["image"]
    assert "views, masking (categorical), pairing" in lines["text"]


# k-NN.


def test_knn_predict_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 8, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    query = torch.randn(1500, 8, generator=gen)  # more than one 1024-row chunk
    for k, t in ((1, 0.07), (7, 0.07), (20, 0.5), (500, 1.0)):
        got = knn_predict(bank, labels, query, k=k, temperature=t)
        want = numpy_knn(bank.double().numpy(), labels.numpy(), query.double().numpy(), min(k, 200), t)
        assert (got.numpy() == want).mean() >= 0.999, (k, t)  # float32 vs float64 near-ties at most
        assert got.dtype == torch.long and got.shape == (1500,)


def test_knn_predict_known_values() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    # Nearest neighbour: bank row 0 (class 0), then row 1 (class 1).
    assert knn_predict(bank, labels, query, k=1).tolist() == [0, 1]
    # All three neighbours of the first query: sims 0.9988 (class 0), 0.0499 and 0.9982 (class 1).
    # T = 1: class 0 gets e^0.9988 = 2.715, class 1 gets e^0.0499 + e^0.9982 = 3.764, so class 1 wins.
    assert knn_predict(bank, labels, query[:1], k=3, temperature=1.0).tolist() == [1]
    # T = 0.01 sharpens the vote: e^99.88 > e^4.99 + e^99.82, class 0 wins.
    assert knn_predict(bank, labels, query[:1], k=3, temperature=0.01).tolist() == [0]
    # k larger than the bank is clamped; scale does not matter (cosine).
    assert knn_predict(bank * 10, labels, query * 3, k=50, temperature=0.01).tolist() == [0, 1]


# Zero-shot on a hand-built model.

DIRECTIONS = {"east": (1.0, 0.0), "north": (0.0, 1.0), "west": (-1.0, 0.0)}


class VectorProcessor:
    """Values are 2-D vectors."""

    def decode(self, raw: Any) -> torch.Tensor:
        return torch.as_tensor(raw, dtype=torch.float32)

    def prepare(self, sample: torch.Tensor) -> torch.Tensor:
        return sample

    def collate(self, samples: list[torch.Tensor]) -> ModalityBatch:
        return ModalityBatch(torch.stack(samples))


class PromptProcessor(VectorProcessor):
    """A prompt becomes the direction of the class it names; "not" prompts point a quarter turn away."""

    def decode(self, raw: Any) -> torch.Tensor:
        name = raw.split()[-1].rstrip(".")
        x, y = DIRECTIONS[name]
        return torch.tensor([y, -x] if raw.startswith("not") else [x, y])


class IdentityModel(nn.Module):
    embed_dim = 2

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.constant = constant

    def encode(self, modality: str, batch: ModalityBatch) -> EncoderOutput:
        data = torch.ones_like(batch.data) if self.constant else batch.data
        return EncoderOutput(tokens=data[:, None], pooled=data)

    def project(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled, dim=-1)


def zero_shot_context(rows: list[dict[str, Any]], class_names: list[str] | None) -> EvalContext:
    return EvalContext(
        model=IdentityModel(),
        processors={"image": VectorProcessor(), "text": PromptProcessor()},
        columns={"image": "image", "text": "caption"},
        load_split=lambda split: Source(rows, class_names, origin=f"hand-built {split}"),
        build_random_model=lambda: IdentityModel(constant=True),
    )


ROWS = [
    {"image": [0.9, 0.2], "label": 1},
    {"image": [0.1, 1.0], "label": 1},
    {"image": [-0.8, 0.3], "label": 2},
    {"image": [0.7, 0.6], "label": 1},
    {"image": [1.0, -0.5], "label": 0},
    {"image": [0.0, 0.0], "label": -1},  # unlabelled: ignored
]
NAMES = ["east", "north", "west"]


def zero_shot(prompts: list[str], **kw: Any) -> dict[str, float]:
    options = ZeroShotOptions(name="zero_shot", modality="image", prompts=prompts, **kw)
    return run_zero_shot(options, zero_shot_context(ROWS, kw.pop("class_names", None) or NAMES))


def test_zero_shot_on_hand_built_embeddings() -> None:
    # Classes east (1, 0), north (0, 1), west (-1, 0): rows 1 and 4 are nearer east than north, so 3 of 5 right.
    results = zero_shot(["a photo of a {}."])
    assert results["zero_shot_top1"] == pytest.approx(0.6)
    # The constant model scores every class alike and picks class 0: right for 1 of the 5 labelled rows.
    assert results["zero_shot_top1_random_init"] == pytest.approx(0.2)
    assert results["zero_shot_chance"] == pytest.approx(1 / 3)


def test_zero_shot_averages_prompts() -> None:
    # "not a {}" alone: east (0, -1), north (1, 0), west (0, 1); rows 2 and 5 are missed: 3 of 5.
    assert zero_shot(["not a {}."], baselines=[]) == {"zero_shot_top1": 0.6, "zero_shot_chance": pytest.approx(1 / 3)}
    # The mean of both: east (1, -1), north (1, 1), west (-1, 1), normalised: every row right.
    for prompts in (["a {}.", "not a {}."], ["not a {}.", "a {}."]):
        assert zero_shot(prompts, prefix="zs", baselines=[])["zs_top1"] == pytest.approx(1.0)


def test_zero_shot_needs_class_names() -> None:
    options = ZeroShotOptions(name="zero_shot", modality="image", baselines=[])
    with pytest.raises(ValueError, match="has no class names; set class_names"):
        run_zero_shot(options, zero_shot_context(ROWS, None))
    named = options.model_copy(update={"class_names": NAMES})
    assert run_zero_shot(named, zero_shot_context(ROWS, None))["zero_shot_top1"] == pytest.approx(0.6)


@pytest.mark.parametrize("name", ["knn", "linear_probe"])
def test_matryoshka_widths_of_tokens_are_refused(name: str) -> None:
    from pydantic import ValidationError

    from mmssl.eval.knn import KNNOptions
    from mmssl.eval.linear_probe import LinearProbeOptions

    options = {"knn": KNNOptions, "linear_probe": LinearProbeOptions}[name]
    assert options(name=name, modality="image", features="pooled", widths=[8]).widths == [8]
    with pytest.raises(ValidationError, match=r"widths \[8\] slice the pooled or projected embedding"):
        options(name=name, modality="image", features="tokens", widths=[8])
