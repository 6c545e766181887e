"""Streamed sources (WebDataset shards from `mmssl data pack`, streamed Parquet, folders): epoch order, sharding
across processes and workers, exact and elastic mid-epoch resume, bad samples, packing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from streaming_data import ROWS, fashion_rows, pack_shards, tiny_tree, write_folder, write_parquet
from torch.utils.data import DataLoader
from torchrun import run_two_processes

import mmssl.data.feed as feed
from mmssl.build import load_source
from mmssl.compiler import compile_recipe
from mmssl.data.errors import DataErrorLimit, read_skipped
from mmssl.data.streaming.loader import StreamBatches, StreamSlice
from mmssl.data.streaming.order import EpochOrder
from mmssl.data.streaming.pack import pack
from mmssl.datasets.fashion_mnist import CLASS_NAMES
from mmssl.modality import ModalityBatch
from mmssl.recipe import RecipeError, parse_recipe
from mmssl.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_shards(tmp_path_factory.mktemp("shards") / "fm")


def plan_of(tree: dict[str, Any], base: Path):
    return compile_recipe(tree, source="test", base_dir=base)


def source_of(spec: dict[str, Any], base: Path = REPO):
    return load_source(plan_of(tiny_tree(spec), base), "train")


# Order and sharding.


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    counts = [20, 20, 20, 20, 16]
    order = EpochOrder(counts, seed=3, shuffle_buffer=32)
    epochs = [[order.natural(e * ROWS + q) for q in range(ROWS)] for e in (0, 1)]
    for e, pairs in enumerate(epochs):
        assert {p[0] for p in pairs} == {e}
        assert sorted(p[1] for p in pairs) == list(range(ROWS))  # every sample once per epoch
    assert [p[1] for p in epochs[0]] != [p[1] for p in epochs[1]]
    again = EpochOrder(counts, seed=3, shuffle_buffer=32)
    assert [again.natural(q)[1] for q in range(ROWS)] == [p[1] for p in epochs[0]]
    assert [EpochOrder(counts, 4, 32).natural(q)[1] for q in range(ROWS)] != [p[1] for p in epochs[0]]
    # A block of 32 samples mixes the shards it spans (two or three of 20 samples each).
    first_block = {epochs[0][q][1] // 20 for q in range(32)}
    assert len(first_block) >= 2


def test_positions_do_not_depend_on_the_number_of_processes() -> None:
    two = [StreamSlice(0, 8, rank, 2) for rank in (0, 1)]
    one = StreamSlice(0, 16)
    for b in range(6):
        assert list(two[0].positions(b)) + list(two[1].positions(b)) == list(one.positions(b))
    resumed = StreamSlice(48, 16)  # 3 global batches of 16 consumed by two processes, resumed by one
    seen = [p for b in range(3) for part in two for p in part.positions(b)]
    seen += [p for b in range(3) for p in resumed.positions(b)]
    assert sorted(seen) == list(range(ROWS))


class LengthProcessor:
    """Stand-in processor: a raw bytes value -> a 1-element tensor of its length (and a view from the rng)."""

    def decode(self, raw: Any) -> torch.Tensor:
        if not isinstance(raw, bytes):
            raise TypeError("expected bytes")
        return torch.tensor([float(len(raw))])

    def prepare(self, sample: torch.Tensor) -> torch.Tensor:
        return sample

    def augment(self, sample: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return sample + float(rng.random())

    def collate(self, samples: list[torch.Tensor]) -> ModalityBatch:
        return ModalityBatch(torch.stack(samples))


def test_batches_do_not_depend_on_workers_or_processes(shards: Path) -> None:
    corpus = source_of({"source": "webdataset", "index": str(shards), "shuffle_buffer": 32}).rows.corpus
    order = EpochOrder(corpus.counts, 3, 32)
    processors = {"image": LengthProcessor()}

    def batches(part: StreamSlice, workers: int, n: int) -> list[tuple[list[int], list[float]]]:
        data = StreamBatches(corpus, order, part, {"image": "image"}, processors, {"image": ["view0"]}, seed=3)
        loader = DataLoader(data, batch_size=None, num_workers=workers)
        out = []
        for batch, _ in zip(loader, range(n), strict=False):
            out.append((batch.index.tolist(), batch.inputs["image"]["view0"].data.flatten().tolist()))
        return out

    single = batches(StreamSlice(0, 16), 0, 8)  # 8 batches of 16: one epoch and a third
    assert batches(StreamSlice(0, 16), 2, 8) == single
    ranks = [batches(StreamSlice(0, 8, r, 2), w, 8) for r, w in ((0, 1), (1, 0))]
    for b in range(8):
        assert ranks[0][b][0] + ranks[1][b][0] == single[b][0]
        assert ranks[0][b][1] + ranks[1][b][1] == single[b][1]  # same augmentation randomness
    epoch0 = [i for idx, _ in single[:6] for i in idx]
    assert sorted(epoch0) == list(range(ROWS))
    epoch1 = [i for idx, _ in single[6:] for i in idx]
    assert len(set(epoch1)) == 32 and epoch1 != epoch0[:32]  # the next epoch starts, in another order
    # Augmentation randomness is keyed by (seed, epoch, position): the same sample gets a new view next epoch.
    first = {i: v for (idx, views) in single[:6] for i, v in zip(idx, views, strict=True)}
    second = {i: v for (idx, views) in single[6:] for i, v in zip(idx, views, strict=True)}
    assert all(first[i] != second[i] for i in second)


# Packing and reading.


def test_pack_round_trip(shards: Path) -> None:
    index = json.loads(shards.read_text())
    assert [s["nsamples"] for s in index["shards"]] == [20, 20, 20, 20, 16]
    assert index["columns"] == {"image": "png", "caption": "txt", "label": "cls"}
    assert index["class_names"] == CLASS_NAMES
    source = source_of({"source": "webdataset", "index": str(shards)})
    assert len(source) == ROWS and source.class_names == CLASS_NAMES
    original = fashion_rows()
    for row, want in zip(source.rows, original, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["image"]))), want["image"])
        assert row["caption"] == want["caption"] and row["label"] == want["label"]
    assert source.rows[37]["caption"] == original[37]["caption"]  # random access


def test_pack_resumes_after_an_interruption(tmp_path: Path) -> None:
    source = source_of({"source": "fashion_mnist", "split": "train", "limit": 50})

    class Interrupted(Exception):
        pass

    def stop_after_25(rows, total, initial):
        for i, row in enumerate(rows, initial):
            if i == 25:
                raise Interrupted
            yield row

    with pytest.raises(Interrupted):
        pack(source, tmp_path / "p", 10, progress=stop_after_25)
    partial = json.loads((tmp_path / "p" / "index.partial.json").read_text())
    assert [s["nsamples"] for s in partial["shards"]] == [10, 10]
    assert not (tmp_path / "p" / "index.json").exists()
    seen: list[int] = []

    def count(rows, total, initial):
        seen.append(initial)
        yield from rows

    index = pack(source, tmp_path / "p", 10, progress=count)
    assert seen == [20]  # resumed after the two finished shards
    assert [s["nsamples"] for s in index["shards"]] == [10] * 5
    assert not (tmp_path / "p" / "index.partial.json").exists()
    rows = list(source_of({"source": "webdataset", "index": str(tmp_path / "p" / "index.json")}).rows)
    assert [r["caption"] for r in rows] == [r["caption"] for r in source.rows]
    with pytest.raises(ValueError, match="shard-size 10"):
        (tmp_path / "q").mkdir()
        shutil.copy(tmp_path / "p" / "shard-000000.tar", tmp_path / "q")
        (tmp_path / "q" / "index.partial.json").write_text(json.dumps(partial))
        pack(source, tmp_path / "q", 7)


def test_hf_parquet_streaming_and_folder_read_the_same_rows(tmp_path: Path) -> None:
    original = fashion_rows()
    parquet = write_parquet(tmp_path / "parquet")
    streamed = source_of({"source": "hf_dataset", "path": str(parquet), "streaming": True, "label_column": "label"})
    assert streamed.rows.corpus.counts == [32, 32, 32] and streamed.class_names == CLASS_NAMES
    for row, want in zip(streamed.rows, original, strict=True):
        assert np.array_equal(np.asarray(row["image"]), want["image"]) and row["caption"] == want["caption"]
    assert streamed.rows[70]["label"] == original[70]["label"]
    folder = source_of({"source": "folder", "path": str(write_folder(tmp_path / "folder")), "shard_size": 10})
    assert folder.class_names == sorted(CLASS_NAMES) and len(folder) == ROWS
    by_name = {Path(r["image"]).stem: r for r in folder.rows}
    for i, want in enumerate(original):
        row = by_name[f"{i:05d}"]
        assert folder.class_names[row["label"]] == CLASS_NAMES[want["label"]]
        assert np.array_equal(np.asarray(Image.open(row["image"])), want["image"])


def test_pack_a_folder_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmssl.cli import app

    folder = write_folder(tmp_path / "img", limit=30)
    result = CliRunner().invoke(app, ["data", "pack", str(folder), "-o", str(tmp_path / "s"), "--shard-size", "8"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["columns"] == {"image": "png", "label": "cls"} and index["class_names"] == sorted(CLASS_NAMES)
    assert [s["nsamples"] for s in index["shards"]] == [8, 8, 8, 6]
    packed = list(source_of({"source": "webdataset", "index": str(tmp_path / "s" / "index.json")}).rows)
    original = list(source_of({"source": "folder", "path": str(folder)}).rows)
    for row, want in zip(packed, original, strict=True):
        assert row["image"] == Path(want["image"]).read_bytes() and row["label"] == want["label"]
    bad = CliRunner().invoke(app, ["data", "pack", "{source: nope}", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "nope" in bad.output and "fashion_mnist" in bad.output


def test_urls_without_index_and_memory_mapped_hf_tables(shards: Path, tmp_path: Path) -> None:
    original = fashion_rows()
    by_urls = source_of(
        {"source": "webdataset", "urls": str(shards.parent / "shard-{000000..000004}.tar"),
         "columns": {"image": "png", "caption": "txt", "label": "cls"}, "limit": 50}
    )  # fmt: skip
    assert by_urls.rows.corpus.counts == [20, 20, 10]  # counted by reading each shard, cut at `limit`
    assert [r["caption"] for r in by_urls.rows] == [r["caption"] for r in original[:50]]
    assert [r["label"] for r in by_urls.rows[10:30]] == [r["label"] for r in original[10:30]]
    parquet = write_parquet(tmp_path / "parquet")
    mapped = source_of(
        {"source": "hf_dataset", "path": str(parquet / "*.parquet"), "label_column": "label", "shard_size": 25}
    )
    assert mapped.rows.corpus.counts == [25, 25, 25, 21] and mapped.class_names == CLASS_NAMES
    for row, want in zip(mapped.rows, original, strict=True):
        assert np.array_equal(np.asarray(row["image"]), want["image"]) and row["label"] == want["label"]


def test_evaluation_reads_a_streamed_split(shards: Path, tmp_path: Path) -> None:
    from mmssl.run import evaluate, load_run

    tree = tiny_tree({"source": "webdataset", "index": str(shards)}, 16, 1)
    tree["data"]["test"] = {"source": "webdataset", "index": str(shards), "limit": 40}
    tree["evaluations"] = [{"name": "knn", "modality": "image", "bank": "train", "query": "test", "k": 1}]
    train(plan_of(tree, REPO), tmp_path / "run")
    report = evaluate(load_run(tmp_path / "run", "cpu"), "cpu")
    assert report.errors == {}
    results = report.results
    assert results["knn_top1"] == 1.0  # the 40 queries are in the bank: each one's nearest neighbour is itself
    assert 0.0 <= results["knn_top1_random_init"] <= 1.0


def test_concat_mixes_a_streamed_part_with_an_in_memory_one(shards: Path) -> None:
    spec = {
        "source": "concat",
        "parts": [
            {"source": "webdataset", "index": str(shards)},
            {"source": "fashion_mnist", "split": "test", "limit": 30},
        ],
        "repeats": [1, 2],
    }
    source = source_of(spec)
    corpus = source.rows.corpus
    assert len(source) == ROWS + 2 * 30 and source.class_names == CLASS_NAMES
    order = EpochOrder(corpus.counts, 0, 50)
    epoch = [order.natural(q)[1] for q in range(len(source))]
    assert sorted(epoch) == list(range(len(source)))
    test_rows = list(load_source(plan_of(tiny_tree(spec["parts"][1]), REPO), "train").rows)
    tail = [source.rows[i] for i in range(ROWS, len(source))]
    for i, row in enumerate(tail):  # the in-memory part, twice
        assert np.array_equal(row["image"], test_rows[i % 30]["image"]) and row["label"] == test_rows[i % 30]["label"]
    assert source.rows[5]["caption"] == fashion_rows(6)[5]["caption"]


def test_missing_shard_is_an_error_naming_it(shards: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(shards.parent, tmp_path / "copy")
    (copy / "shard-000002.tar").unlink()
    source = source_of({"source": "webdataset", "index": str(copy / "index.json")})  # the index plans the epoch
    with pytest.raises(FileNotFoundError, match="shard .*shard-000002.tar not found"):
        list(source.rows)
    (copy / "shard-000001.tar").write_bytes(b"not a tar file" * 40)
    with pytest.raises(ValueError, match="shard .*shard-000001.tar is unreadable"):
        source.rows[25]
    without_names = {"source": "webdataset", "index": str(copy / "index.json"), "class_names": None}
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps(dict(index, class_names=None)))
    with pytest.raises(ValueError, match="shard .*shard-000001.tar is unreadable"):
        source_of(without_names)  # the label space reads every label when no class names are declared


def test_data_error_policy_keys_are_validated() -> None:
    tree = tiny_tree({"source": "fashion_mnist", "limit": 32})
    tree["data"]["on_error"] = "ignore"
    with pytest.raises(RecipeError, match="data.on_error: Input should be 'raise' or 'skip'"):
        parse_recipe(tree)
    tree["data"].update(on_error="skip", max_errors=3)
    recipe = parse_recipe(tree)
    assert recipe.data.max_errors == 3 and recipe.data.on_error == "skip" and list(recipe.data) == ["train"]


# Training.


def record_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    seen: list[list[int]] = []
    real = feed.TrainFeed.next

    def spy(self: feed.TrainFeed):
        batch = real(self)
        seen.append(batch.index.tolist())
        return batch

    monkeypatch.setattr(feed.TrainFeed, "next", spy)
    return seen


def copy_setup(run: Path, dest: Path) -> None:
    """A run folder with ``run``'s setup and no checkpoint: the WordPiece trainer of `tokenizers` may number a
    vocabulary differently in a fresh run, so runs compared for bit-identity share one setup."""
    dest.mkdir(parents=True)
    shutil.copytree(run / "processors", dest / "processors")
    for name in ("labels.json", "recipe.yaml", "run.json"):
        shutil.copy(run / name, dest / name)


def weights_differ(a: Path, b: Path) -> list[str]:
    x, y = load_file(str(a)), load_file(str(b))
    return sorted(set(x) ^ set(y)) + [k for k in sorted(set(x) & set(y)) if not torch.equal(x[k], y[k])]


def test_single_process_resume_mid_epoch_is_exact(shards: Path, tmp_path: Path, monkeypatch) -> None:
    seen = record_batches(monkeypatch)
    plan = plan_of(tiny_tree({"source": "webdataset", "index": str(shards), "shuffle_buffer": 32}, 16, 6), REPO)
    train(plan, tmp_path / "full")
    full_seen = list(seen)
    copy_setup(tmp_path / "full", tmp_path / "stopped")
    seen.clear()
    train(plan, tmp_path / "stopped", resume=True, stop_after=3)
    state = json.loads((tmp_path / "stopped" / "checkpoints" / "step_0000003" / "data.json").read_text())
    assert state["position"] == 48 and state["epoch"] == 0 and state["epoch_size"] == ROWS
    seen.clear()
    train(plan, tmp_path / "stopped", resume=True)
    assert seen == full_seen[3:]  # nothing re-read, nothing skipped
    assert sorted(i for b in full_seen for i in b) == list(range(ROWS))
    assert weights_differ(tmp_path / "full" / "model.safetensors", tmp_path / "stopped" / "model.safetensors") == []


def corrupt_shard(shard: Path, keys: dict[str, str]) -> None:
    """Rewrite a tar shard with the png of some keys broken: ``corrupt`` (garbage bytes) or ``truncated``."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    shard.unlink()
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            key, ext = member.name.split(".", 1)
            if ext == "png" and key in keys:
                data = b"\x89PNG garbage" * 8 if keys[key] == "corrupt" else data[: len(data) // 2]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = pack_shards(tmp_path_factory.mktemp("bad") / "fm", limit=32, shard_size=8)
    corrupt_shard(index.parent / "shard-000001.tar", {"000000009": "corrupt", "000000013": "truncated"})
    return index


def bad_plan(index: Path, **policy: Any):
    tree = tiny_tree({"source": "webdataset", "index": str(index), "shuffle_buffer": 16}, 8, 4)
    tree["data"].update(policy)
    # The image statistics come from the first 8 rows (shard 0); the bad files are met in training.
    tree["modalities"]["image"]["options"]["stats_samples"] = 8
    return plan_of(tree, REPO)


def test_corrupt_and_truncated_images_are_skipped_and_counted(bad_shards: Path, tmp_path: Path) -> None:
    result = train(bad_plan(bad_shards, on_error="skip", max_errors=2), tmp_path / "run")
    assert result.finished
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_rows_total"] == 2 and records[-1]["bad_rows"] == 2  # the epoch of 32 was read
    assert sum(r["skipped_rows"] for r in records) == 2
    skipped = read_skipped(tmp_path / "run" / "skipped.jsonl")
    assert sorted(r.file for r in skipped) == ["key 000000009", "key 000000013"]
    assert {r.origin for r in skipped} == {str(bad_shards.parent / "shard-000001.tar")}
    assert any("truncated" in r.error for r in skipped)
    assert json.loads((tmp_path / "run" / "checkpoints" / "step_0000004" / "data.json").read_text())["position"] == 32


def test_error_limit_stops_training_naming_shard_and_key(bad_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(
        DataErrorLimit, match=r"more than data.max_errors = 1.* of .*shard-000001.tar.*key 0000000(09|13)"
    ):
        train(bad_plan(bad_shards, on_error="skip", max_errors=1), tmp_path / "limit")
    with pytest.raises(
        ValueError, match=r"shard .*shard-000001.tar, key '0000000(09|13)', column 'image'.*on_error: skip"
    ):
        train(bad_plan(bad_shards, on_error="raise"), tmp_path / "raise")


# Two processes (torchrun), stopped mid-epoch, resumed with two processes and with one.


@pytest.mark.slow
def test_two_process_stop_and_resume_with_two_and_with_one(tmp_path: Path, monkeypatch) -> None:
    index = pack_shards(tmp_path / "shards")
    specs = {
        "webdataset": ({"source": "webdataset", "index": str(index), "shuffle_buffer": 32}, False),
        "hf_parquet": (
            {"source": "hf_dataset", "path": str(write_parquet(tmp_path / "pq")), "streaming": True,
             "label_column": "label", "shuffle_buffer": 32},
            False,
        ),
        "folder": ({"source": "folder", "path": str(write_folder(tmp_path / "img")), "shard_size": 20}, True),
    }  # fmt: skip
    jobs = {}
    for name, (spec, image_only) in specs.items():
        tree = tiny_tree(spec, batch_size=8, steps=6, image_only=image_only)
        tree["train"]["num_workers"] = 1 if name == "webdataset" else 0
        jobs[name] = {"tree": tree, "out": str(tmp_path / name)}
    # Elastic 1 -> 2 (`--resume` keeps the global batch, train.batch_size x processes x grad_accum): one process of
    # batch 16 stops after 3 steps (48 samples), two processes of batch 8 resume it for 3 steps (48 samples).
    seen_one = record_batches(monkeypatch)
    single = tiny_tree(specs["webdataset"][0], batch_size=16, steps=6)
    train(plan_of(single, REPO), tmp_path / "one" / "stopped", stop_after=3)
    seen_before_two = [i for b in seen_one for i in b]
    two = json.loads(json.dumps(jobs["webdataset"]["tree"]))
    jobs["webdataset_1to2"] = {
        "tree": two,
        "out": str(tmp_path / "one"),
        "resume_from": str(tmp_path / "one" / "stopped"),
    }
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    code, output = run_two_processes(["tests/dist_scripts/streaming_resume.py", str(tmp_path / "jobs.json")], 1200)
    assert code == 0, output

    resumed = [i for r in (0, 1) for b in json.loads((tmp_path / "one" / "resumed2" / f"seen_rank{r}.json").read_text())
               for i in b]  # fmt: skip
    assert len(seen_before_two) == 48 and Counter(seen_before_two + resumed) == Counter(range(ROWS))
    del jobs["webdataset_1to2"]
    for name, job in jobs.items():
        out = Path(job["out"])

        def seen(run: str, out: Path = out) -> list[int]:
            return [i for r in (0, 1) for b in json.loads((out / run / f"seen_rank{r}.json").read_text()) for i in b]

        full = seen("full")
        assert sorted(full) == list(range(ROWS)), name  # 6 steps x 16 = one epoch, every sample once
        # (a) resumed with two processes: bit-identical to the uninterrupted run.
        assert sorted(seen("stopped") + seen("resumed2")) == list(range(ROWS)), name
        assert weights_differ(out / "full" / "model.safetensors", out / "resumed2" / "model.safetensors") == [], name
        # (b) resumed with one process of batch 16 (the same global batch) for 3 more steps (48 samples): the
        # epoch completes, nothing twice.
        shutil.copytree(out / "stopped", out / "resumed1", ignore=shutil.ignore_patterns("seen_rank*"))
        tree = json.loads(json.dumps(job["tree"]))
        tree["train"]["batch_size"] = 16
        seen_one.clear()
        result = train(plan_of(tree, REPO), out / "resumed1", resume=True)
        assert result.finished and result.step == 6
        keys = seen("stopped") + [i for b in seen_one for i in b]
        assert Counter(keys) == Counter(range(ROWS)), name
