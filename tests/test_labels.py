"""One label space per dataset: every split numbers its classes the same way, and bad labels name file, row, value
(as ``mmssl.data.labels.LabelError``, a ValueError).

The kNN checks use the real ``knn`` evaluator's raw-pixel baseline with k=1 and test = (a subset of) the train
images: each test image's nearest neighbour is itself, so the score is 1.000 exactly when a class has the same
index in both splits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mmssl.build import build_model, build_processors, load_source
from mmssl.compiler import compile_recipe
from mmssl.eval.base import EvalContext, run_evaluations
from mmssl.eval.embed import labelled_values

NAMES = ["bird", "cat", "dog", "fox"]


def write_images(folder: Path, n: int) -> list[str]:
    """``n`` distinct random 8x8 greyscale images as .npy files; returns their names."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        np.save(folder / f"{i}.npy", rng.random((8, 8), dtype=np.float32))
        names.append(f"img/{i}.npy")
    return names


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_recipe(folder: Path, train: dict[str, Any], test: dict[str, Any]) -> Path:
    recipe = {
        "name": "labels",
        "data": {"train": train, "test": test},
        "modalities": {
            "image": {"options": {"image_size": 8, "patch_size": 4, "channels": 1, "width": 8, "depth": 1, "heads": 1}}
        },
        "model": {"embed_dim": 4},
        "objectives": [{"name": "simclr", "modality": "image", "proj_dim": 4, "hidden_dim": 8}],
        "train": {"steps": 1, "batch_size": 4},
        "evaluations": [{"name": "knn", "modality": "image", "k": 1, "baselines": ["raw"]}],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def manifest(path: Path, **options: Any) -> dict[str, Any]:
    return {"source": "manifest", "path": str(path), "path_columns": ["image"], "label_column": "label", **options}


def raw_knn(recipe: Path) -> float:
    plan = compile_recipe(recipe)
    processors = build_processors(plan, load_source(plan, "train"))
    ctx = EvalContext(
        model=build_model(plan, processors).eval(),
        processors=processors,
        columns={"image": "image"},
        load_split=lambda split: load_source(plan, split),
        build_random_model=lambda: None,
    )
    return run_evaluations(plan.evaluations, ctx).results["knn_top1_raw"]


@pytest.mark.parametrize("labels", ["integers", "names_one_absent_from_test", "class_names"])
def test_raw_pixel_knn_with_test_equal_train_scores_one(tmp_path: Path, labels: str) -> None:
    images = write_images(tmp_path / "img", 16)
    classes = [i % 4 for i in range(16)]
    if labels == "integers":
        train_rows = [{"image": im, "label": c} for im, c in zip(images, classes, strict=True)]
        options: dict[str, Any] = {}
    elif labels == "names_one_absent_from_test":
        train_rows = [{"image": im, "label": NAMES[c]} for im, c in zip(images, classes, strict=True)]
        options = {}
    else:  # names in an order that is not sorted, given by class_names
        order = ["fox", "cat", "dog", "bird"]
        train_rows = [{"image": im, "label": order[c]} for im, c in zip(images, classes, strict=True)]
        options = {"class_names": order}
    # The test split is the train images without class 0 ("bird"/"fox"): per-split numbering would shift the rest.
    test_rows = [row for row, c in zip(train_rows, classes, strict=True) if c != 0]
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    recipe = write_recipe(tmp_path, manifest(train, **options), manifest(test, **options))
    assert raw_knn(recipe) == 1.0


def test_no_split_is_renumbered_on_its_own(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 8)
    rows = [{"image": im, "label": NAMES[i % 4]} for i, im in enumerate(images)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [r for r in rows if r["label"] in ("dog", "fox")])
    plan = compile_recipe(write_recipe(tmp_path, manifest(train), manifest(test)))
    by_image = {row["image"]: row["label"] for row in load_source(plan, "train").rows}
    test_source = load_source(plan, "test")
    assert test_source.class_names == sorted(NAMES)  # the whole dataset's classes, not the test split's two
    for row in test_source.rows:
        assert row["label"] == by_image[row["image"]] == sorted(NAMES).index(NAMES[int(row["image"].stem) % 4])


def test_class_only_in_test_is_reported(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 6)
    train = write_jsonl(tmp_path / "train.jsonl", [{"image": im, "label": "cat"} for im in images[:3]])
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"image": images[3], "label": "cat"}, {"image": images[4], "label": "emu"}]
    )
    plan = compile_recipe(write_recipe(tmp_path, manifest(train), manifest(test)))
    with pytest.warns(UserWarning, match=r"data.test .* 1 class\(es\) that data.train never shows: \['emu'\]"):
        source = load_source(plan, "test")
    assert plan.labels is not None and plan.labels.only_in == {"test": ["emu"]}
    assert [row["label"] for row in source.rows] == [0, 1]  # cat, emu: sorted over both splits


def bad_manifest_error(tmp_path: Path, name: str, text: str, **options: Any) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_train(write_recipe(tmp_path, manifest(path, **options), manifest(path)))
    assert str(path) in str(err.value)
    return str(err.value)


def load_train(recipe: Path) -> None:
    """Validate, then load the training split: a bad label column is refused at the first (when an evaluation
    needs the split's labels, validation reads the manifest before any training) or else at the second."""
    load_source(compile_recipe(recipe), "train")


def test_mixed_label_types_name_file_row_and_value(tmp_path: Path) -> None:
    message = bad_manifest_error(tmp_path, "m.jsonl", '{"image": "a", "label": "cat"}\n{"image": "b", "label": 3}\n')
    assert "row 2: label 3 is an integer" in message and "row 1 holds 'cat'" in message


def test_non_integer_among_integers_names_file_row_and_value(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"image": "x", "label": v}) + "\n" for v in (0, 1, 2.5, 1))
    assert "row 3: label 2.5 is not an integer class index" in bad_manifest_error(tmp_path, "m.jsonl", rows)


def test_csv_row_short_one_field_is_a_missing_label(tmp_path: Path) -> None:
    message = bad_manifest_error(tmp_path, "m.csv", "image,label\na.npy,cat\nb.npy\nc.npy,dog\n")
    assert "row 2: label is missing (got None)" in message


def test_jsonl_row_without_label_names_file_and_row(tmp_path: Path) -> None:
    message = bad_manifest_error(tmp_path, "m.jsonl", '{"image": "a", "label": 1}\n{"image": "b"}\n')
    assert "row 2: label is missing" in message and "missing_labels: unlabelled" in message


def test_unlabelled_rows_train_but_stay_out_of_evaluation(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 4)
    rows = [{"image": images[0], "label": "cat"}, {"image": images[1]}, {"image": images[2], "label": "dog"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    spec = manifest(path, missing_labels="unlabelled")
    plan = compile_recipe(write_recipe(tmp_path, spec, spec))
    source = load_source(plan, "train")
    assert source.unlabelled == 1 and [row["label"] for row in source.rows] == [0, None, 1]
    values, labels = labelled_values(source, "image")
    assert [Path(v).name for v in values] == ["0.npy", "2.npy"] and labels.tolist() == [0, 1]


def test_columns_are_every_key_of_any_jsonl_row(tmp_path: Path) -> None:
    """A JSONL manifest whose first row leaves out the label and split keys still has those columns."""
    images = write_images(tmp_path / "img", 3)
    rows = [{"image": images[0]}, {"image": images[1], "label": "dog", "fold": "a"}, {"image": images[2], "fold": "a"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    spec = manifest(path, missing_labels="unlabelled")
    plan = compile_recipe(write_recipe(tmp_path, spec, spec))
    assert [row["label"] for row in load_source(plan, "train").rows] == [None, 0, None]
    spec = manifest(path, missing_labels="unlabelled", split_column="fold", split="a")
    plan = compile_recipe(write_recipe(tmp_path, spec, spec))
    assert [row["image"].name for row in load_source(plan, "train").rows] == ["1.npy", "2.npy"]


def test_names_in_one_split_integers_in_another_are_refused(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 2)
    train = write_jsonl(tmp_path / "train.jsonl", [{"image": images[0], "label": "cat"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"image": images[1], "label": 0}])
    plan = compile_recipe(write_recipe(tmp_path, manifest(train), manifest(test)))
    with pytest.raises(ValueError, match=r"data.train \(.*train.jsonl\) has class names .* data.test .* integer"):
        load_source(plan, "train")


def test_manifest_split_column_selects_rows(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 6)
    rows = [{"image": im, "label": i % 2, "fold": "test" if i >= 4 else "train"} for i, im in enumerate(images)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    train, test = manifest(path, split_column="fold", split="train"), manifest(path, split_column="fold", split="test")
    plan = compile_recipe(write_recipe(tmp_path, train, test))
    assert [r["image"].name for r in load_source(plan, "train").rows] == ["0.npy", "1.npy", "2.npy", "3.npy"]
    assert [r["image"].name for r in load_source(plan, "test").rows] == ["4.npy", "5.npy"]
    # Row numbers in messages count rows of the file, not of the selected split.
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:5], {"image": images[5], "label": 0.5, "fold": "test"}])
    with pytest.raises(ValueError, match=r"bad.jsonl row 6: label 0.5"):
        load_train(write_recipe(tmp_path, manifest(bad, split_column="fold", split="test"), manifest(bad)))


def test_manifest_holdout_is_a_stratified_seeded_disjoint_split(tmp_path: Path) -> None:
    """15 rows of class 0 and 5 of class 1 (one unlabelled): a 0.2 holdout keeps round(0.2 n) of each label value
    out, train and test partition the file, and the same seed draws the same rows."""
    images = write_images(tmp_path / "img", 21)
    rows = [{"image": im, "label": 0 if i < 15 else 1} for i, im in enumerate(images[:20])] + [{"image": images[20]}]
    path = write_jsonl(tmp_path / "all.jsonl", rows)

    def names(split: str, seed: int = 0) -> list[str]:
        spec = manifest(path, holdout=0.2, holdout_seed=seed, split=split, missing_labels="unlabelled")
        return [r["image"].name for r in load_source(compile_recipe(write_recipe(tmp_path, spec, spec)), "train").rows]

    train, test = names("train"), names("test")
    assert sorted(train + test) == sorted(f"{i}.npy" for i in range(21)) and not set(train) & set(test)
    held = [int(name.split(".")[0]) for name in test]
    assert (sum(i < 15 for i in held), sum(15 <= i < 20 for i in held), 20 in held) == (3, 1, False)
    assert train == sorted(train, key=lambda n: int(n.split(".")[0]))  # the file's order
    assert names("test") == test and names("test", seed=1) != test
    with pytest.raises(ValueError, match="`holdout` needs `split: train` or `split: test`"):
        compile_recipe(write_recipe(tmp_path, manifest(path, holdout=0.2), manifest(path)))


def test_split_without_split_column_is_a_recipe_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"image": "a", "label": 0}])
    with pytest.raises(ValueError, match=r"data.train.*`split_column` and `split` go together"):
        compile_recipe(write_recipe(tmp_path, manifest(path, split="test"), manifest(path)))


def test_run_keeps_its_label_space(tmp_path: Path) -> None:
    """The label space is stored in the run (labels.json) and a loaded run uses it, not a fresh resolution."""
    from mmssl.run import load_run
    from mmssl.train.trainer import train

    images = write_images(tmp_path / "img", 8)
    rows = [{"image": im, "label": NAMES[i % 4]} for i, im in enumerate(images)]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    test_file = write_jsonl(tmp_path / "test.jsonl", rows[2:4])
    plan = compile_recipe(write_recipe(tmp_path, manifest(train_file), manifest(test_file)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(plan, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert saved["class_names"] == sorted(NAMES) and saved["named"] is True
    write_jsonl(train_file, rows[:2])  # the data shrinks after training: the run's numbering must not move
    run = load_run(tmp_path / "run")
    assert [r["label"] for r in load_source(run.plan, "test").rows] == [sorted(NAMES).index(NAMES[i]) for i in (2, 3)]


def labelled(path: Path, labels: list[Any]):
    from mmssl.finetune.data import LabelledRows

    return LabelledRows(path, [f"v{i}" for i in range(len(labels))], labels, list(range(len(labels))), "value")


def test_finetune_mixed_labels_name_file_row_and_value(tmp_path: Path) -> None:
    from mmssl.finetune.data import encode_labels

    train, test = labelled(tmp_path / "train.csv", ["cat", "dog", 3]), labelled(tmp_path / "test.csv", ["cat"])
    with pytest.raises(ValueError, match=r"train.csv row 3: label 3 is an integer but .*train.csv row 1 holds 'cat'"):
        encode_labels(train, test, "label", "classification")
    train = labelled(tmp_path / "train.csv", [0, 1, 1.5])
    with pytest.raises(ValueError, match=r"train.csv row 3: label 1.5 is not an integer"):
        encode_labels(train, test, "label", "classification")


def test_finetune_keeps_the_run_class_order(tmp_path: Path) -> None:
    from mmssl.finetune.data import encode_labels

    train, test = labelled(tmp_path / "a.csv", ["dog", "cat", "emu", "dog"]), labelled(tmp_path / "b.csv", ["cat"])
    run_classes = ["emu", "dog", "zebra", "cat"]
    targets = encode_labels(train, test, "label", "classification", run_classes)
    assert targets.classes == run_classes
    assert targets.train.tolist() == [1, 3, 0, 1] and targets.test.tolist() == [3]
    assert encode_labels(train, test, "label", "classification").classes == ["cat", "dog", "emu"]  # no run


def test_concat_numbers_names_over_all_its_parts(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", 4)
    a = write_jsonl(tmp_path / "a.jsonl", [{"image": images[0], "label": "dog"}, {"image": images[1], "label": "ant"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"image": images[2], "label": "cat"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"image": images[3], "label": 1}])
    both = {"source": "concat", "parts": [manifest(a), manifest(b)]}
    plan = compile_recipe(write_recipe(tmp_path, both, manifest(b)))
    assert [row["label"] for row in load_source(plan, "train").rows] == [2, 0, 1]  # ant, cat, dog
    mixed = {"source": "concat", "parts": [manifest(a), manifest(c)]}
    with pytest.raises(ValueError, match=r"concat: part .*c.jsonl has integer labels while another part has class"):
        load_train(write_recipe(tmp_path, mixed, manifest(b)))
