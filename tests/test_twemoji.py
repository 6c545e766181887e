"""The ``twemoji`` source: Twitter emoji PNGs from the npm package ``emoji-datasource-twitter`` with their names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mmssl.data.sources import SOURCES, Source
from mmssl.datasets.npm import find_npm_package
from mmssl.datasets.twemoji import CATEGORIES, PACKAGE
from mmssl_image.decode import decode_image

REPO = Path(__file__).resolve().parent.parent


def package_folder() -> Path | None:
    try:
        return find_npm_package(PACKAGE)
    except FileNotFoundError:
        return None


needs_twemoji = pytest.mark.skipif(
    package_folder() is None,
    reason=f"npm package {PACKAGE} is not installed (run `bash scripts/install-data.sh`)",
)


def load(**options: object) -> Source:
    kind = SOURCES.get("twemoji")
    return kind.load(kind.options.model_validate(options), REPO)


def by_short_name(source: Source, short_name: str) -> dict:
    rows = [row for row in source.rows if row["short_name"] == short_name]
    assert len(rows) == 1, f"{short_name}: {len(rows)} rows"
    return rows[0]


@needs_twemoji
def test_splits_are_disjoint_and_cover_every_emoji() -> None:
    train, test, every = load(split="train"), load(split="test"), load(split="all")
    assert len(every) > 1800  # 1911 emoji with a Twitter image in version 16.0.0
    assert len(train) + len(test) == len(every)
    assert 0.15 < len(test) / len(every) < 0.25
    train_codes, test_codes = {r["unified"] for r in train.rows}, {r["unified"] for r in test.rows}
    assert not train_codes & test_codes
    assert train_codes | test_codes == {r["unified"] for r in every.rows}
    assert len(train_codes) == len(train)  # one row per emoji without skin tones
    # Deterministic, and a larger test share only moves emoji from train to test.
    assert [r["unified"] for r in load(split="test").rows] == [r["unified"] for r in test.rows]
    assert test_codes < {r["unified"] for r in load(split="test", test_fraction=0.4).rows}


@needs_twemoji
def test_rows_fields_and_class_names() -> None:
    source = load(split="test")
    assert source.class_names == CATEGORIES and len(CATEGORIES) == 10
    assert source.columns == ["image", "text", "label", "category", "subcategory", "unified", "short_name"]
    assert "emoji.json" in source.origin
    for row in source.rows:
        assert set(row) == set(source.columns)
        assert isinstance(row["image"], Path) and row["image"].is_file() and row["image"].suffix == ".png"
        assert isinstance(row["text"], str) and row["text"] == row["text"].lower() and row["text"]
        assert CATEGORIES[row["label"]] == row["category"]
        assert isinstance(row["subcategory"], str) and row["subcategory"]
    every = load(split="all")
    assert {r["category"] for r in every.rows} == set(CATEGORIES)
    assert len({r["subcategory"] for r in every.rows}) > 90


@needs_twemoji
def test_captions_of_a_known_emoji() -> None:
    assert by_short_name(load(split="all"), "grinning")["text"] == "grinning face"
    assert by_short_name(load(split="all", caption="short_names"), "grinning")["text"] == "grinning"
    assert by_short_name(load(split="all", caption="short_names"), "female-teacher")["text"] == "female teacher"
    assert by_short_name(load(split="all", caption="template"), "grinning")["text"] == "an emoji of grinning face"
    custom = load(split="all", caption="template", template="{name} ({subcategory}, {category})")
    assert by_short_name(custom, "grinning")["text"] == "grinning face (face-smiling, smileys & emotion)"
    row = by_short_name(load(split="all"), "grinning")
    assert row["label"] == CATEGORIES.index("Smileys & Emotion") and row["image"].name == "1f600.png"


@needs_twemoji
def test_image_decodes_to_rgb_on_white() -> None:
    row = by_short_name(load(split="all"), "grinning")
    image = decode_image(row["image"], channels=3)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert torch.allclose(image[:, 0, 0], torch.ones(3))  # the transparent corner is composited on white
    assert float(image[:, 32, 32].sum()) < 3.0  # the face itself is coloured


@needs_twemoji
def test_skin_tones_and_limit() -> None:
    plain = load(split="all")
    toned = load(split="all", skin_tones=True)
    assert len(toned) > 1.9 * len(plain)  # 1911 emoji and 1875 skin-tone variations in 16.0.0
    texts = {r["text"] for r in toned.rows}
    assert "father christmas: dark skin tone" in texts and "father christmas" in texts
    for split in ("train", "test"):  # a variation is in its base emoji's split
        toned_split = {r["short_name"] for r in load(split=split, skin_tones=True).rows}
        assert toned_split == {r["short_name"] for r in load(split=split).rows}
    assert len(load(split="train", limit=7)) == 7


def test_bad_options_are_refused() -> None:
    options = SOURCES.get("twemoji").options
    for bad in (
        {"split": "validation"},
        {"caption": "description"},
        {"test_fraction": 1.0},
        {"caption": "template", "template": "an emoji of {title}"},
        {"template": "a {name}"},  # template without caption: template
        {"text_column": "label"},
        {"limit": 0},
        {"colour": "red"},
    ):
        with pytest.raises(ValidationError):
            options.model_validate(bad)


def test_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="emoji.json"):
        load(root=str(tmp_path))
    monkeypatch.setenv("MMSSL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="install-data.sh"):
        load()
