"""Emoji artwork of the npm ``emoji-datasource-<vendor>`` packages, with their Unicode names: ``twemoji`` (Twitter's
Twemoji, ``emoji-datasource-twitter``) and ``noto_emoji`` (Google's Noto Color Emoji, ``emoji-datasource-google``).

Both packages come from the same project (iamcal/emoji-data) and share the layout below; one loader
(``load_emoji``) reads either, given its ``Vendor``.

The package (installed by ``scripts/install-data.sh``, found with ``mmssl.datasets.npm.find_npm_package``) holds
``emoji.json`` (one entry per emoji: ``name``, ``unified`` code, ``short_names``, ``category``, ``subcategory``,
``image`` file name, ``has_img_twitter``) and 64x64 RGBA PNGs in ``img/twitter/64/``. Every emoji with a
Twitter image is one row: its PNG path, a caption from its human-written name, and its category (10 classes)
as the label, so one split serves image-text retrieval (each emoji is its own pair) and zero-shot
classification of the category from class-name prompts.

The train/test split is a stable hash of the emoji's ``unified`` code (SHA-1, as in ``sklearn_digits``), so it
does not depend on the package's order or on ``limit``. Skin-tone variations (``skin_variations``, 1,875
images of 323 people and hands emoji) are left out by default: they repeat an image with a different colour
and a caption that differs only by "light skin tone" etc., which would swamp the People & Body category and
make captions near-duplicates. ``skin_tones: true`` adds them, each in the split of its base emoji. Every vendor
uses the same hash (salted ``twemoji/``), so an emoji is in the same split in every vendor's artwork: a model
trained on one vendor's train split can be tested on another's test split without seeing those emoji.

The PNGs have transparent backgrounds; the image plugin composites transparency on white
(``mmssl_image.decode``), so emoji appear on a white background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmssl.data.sources import Source, SourceOptions, hash_share, register_source
from mmssl.datasets.npm import find_npm_package


@dataclass(frozen=True)
class Vendor:
    """One vendor's emoji package: ``emoji-datasource-<key>``, images in ``img/<key>/64``, flag ``has_img_<key>``."""

    source: str  # the registered source name
    key: str  # the vendor's name in the package (twitter, google, apple, facebook)

    @property
    def package(self) -> str:
        return f"emoji-datasource-{self.key}"

    @property
    def image_folder(self) -> Path:
        return Path("img") / self.key / "64"

    @property
    def has_image(self) -> str:
        return f"has_img_{self.key}"


TWITTER = Vendor("twemoji", "twitter")
GOOGLE = Vendor("noto_emoji", "google")
PACKAGE = TWITTER.package
#: The 10 categories in the package's own order (``categories.json``); a row's ``label`` indexes this list.
CATEGORIES = [
    "Smileys & Emotion",
    "People & Body",
    "Component",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
#: Emoji modifier code -> the Unicode name of its skin tone.
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
DEFAULT_TEMPLATE = "an emoji of {name}"
COLUMNS = ["image", "text", "label", "category", "subcategory", "unified", "short_name"]


class TwemojiOptions(SourceOptions):
    split: Literal["train", "test", "all"] = Field(
        "train", description="Hash split by the emoji's unified code (stable across package order and limit)."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the emoji in the test split.")
    root: str | None = Field(
        None, description=f"The {PACKAGE} package folder; None looks in the npm data folder (find_npm_package)."
    )
    caption: Literal["name", "short_names", "template", "none"] = Field(
        "name",
        description="name: the Unicode name, lower-cased ('grinning face'); short_names: the short names with _ "
        "and - as spaces, joined by ', ' ('grinning'); template: `template` filled in, lower-cased; none: no "
        "caption column (images and labels only).",
    )
    template: str = Field(
        DEFAULT_TEMPLATE,
        description="Caption template for caption: template, with {name}, {short_name}, {category}, {subcategory}.",
    )
    skin_tones: bool = Field(
        False, description="Also add each skin-tone variation as a row (in its base emoji's split)."
    )
    text_column: str = Field("text", description="Column the caption is written to.")
    metadata: bool = Field(
        True,
        description="Also write the columns category, subcategory, unified and short_name; false keeps only image, "
        "caption and label (what `mmssl init` should see: the subcategory names the category).",
    )

    @model_validator(mode="after")
    def _check(self) -> TwemojiOptions:
        if self.caption == "template":
            try:
                self.template.format(name="x", short_name="x", category="x", subcategory="x")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"template {self.template!r} is not a valid template with the fields {{name}}, {{short_name}}, "
                    f"{{category}}, {{subcategory}}: {err!r}"
                ) from None
        elif self.template != DEFAULT_TEMPLATE:
            raise ValueError(f"`template` is set but caption is {self.caption!r}; set caption: template")
        if self.text_column in COLUMNS and self.text_column != "text":
            raise ValueError(f"text_column {self.text_column!r} would overwrite a column of the rows ({COLUMNS})")
        return self


def spoken(words: str) -> str:
    """A short name as words: ``female-teacher`` -> ``female teacher``."""
    return " ".join(words.replace("_", " ").replace("-", " ").split())


def caption_of(entry: dict[str, Any], options: TwemojiOptions, tone: str | None = None) -> str:
    """The caption of one emoji (``tone``: the skin tone words of a variation, appended as ``: <tone>``)."""
    name = entry["name"].lower() + (f": {tone}" if tone else "")
    if options.caption == "name":
        return name
    if options.caption == "short_names":
        text = ", ".join(spoken(s) for s in entry.get("short_names") or [entry["short_name"]])
        return text + (f": {tone}" if tone else "")
    return options.template.format(
        name=name,
        short_name=spoken(entry["short_name"]),
        category=entry["category"],
        subcategory=entry["subcategory"],
    ).lower()


def read_entries(folder: Path, package: str = PACKAGE) -> list[dict[str, Any]]:
    file = folder / "emoji.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {folder} is not the {package} npm package folder")
    try:
        entries = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err.msg})") from err
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a list of emoji entries")
    return entries


class NotoEmojiOptions(TwemojiOptions):
    root: str | None = Field(
        None,
        description=f"The {GOOGLE.package} package folder; None looks in the npm data folder (find_npm_package).",
    )


@register_source("twemoji", TwemojiOptions)
def load_twemoji(options: TwemojiOptions, base: Path) -> Source:
    """Rows ``{"image": Path of the 64x64 RGBA PNG, "text": caption, "label": category index, "category",
    "subcategory", "unified", "short_name"}`` sorted by unified code; ``class_names`` are the 10 categories."""
    return load_emoji(TWITTER, options, base)


@register_source("noto_emoji", NotoEmojiOptions)
def load_noto_emoji(options: NotoEmojiOptions, base: Path) -> Source:
    """Google's Noto Color Emoji (``emoji-datasource-google``): the rows and splits of ``twemoji``, other artwork."""
    return load_emoji(GOOGLE, options, base)


def load_emoji(vendor: Vendor, options: TwemojiOptions, base: Path) -> Source:
    """Every emoji with an image of ``vendor`` as one row (see the module docstring); no text column when
    ``caption: none``."""
    root = options.root
    if root is not None and not Path(root).expanduser().is_absolute():
        root = str(base / Path(root).expanduser())
    folder = find_npm_package(vendor.package, root)
    entries = read_entries(folder, vendor.package)
    images = folder / vendor.image_folder
    if not images.is_dir():
        raise FileNotFoundError(f"{images} not found: the {vendor.package} package at {folder} has no 64 px images")
    lookup = {name: i for i, name in enumerate(CATEGORIES)}
    captions = options.caption != "none"
    rows: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: e["unified"]):
        if not entry.get(vendor.has_image) or not entry.get("name"):
            continue
        in_test = hash_share(f"twemoji/{entry['unified']}") < options.test_fraction
        if options.split != "all" and in_test != (options.split == "test"):
            continue
        if entry["category"] not in lookup:
            raise ValueError(
                f"{folder / 'emoji.json'}: emoji {entry['unified']} has unknown category {entry['category']!r}"
            )
        variants: list[tuple[dict[str, Any], str | None]] = [(entry, None)]
        if options.skin_tones:
            for key, variation in sorted((entry.get("skin_variations") or {}).items()):
                if variation.get(vendor.has_image):
                    tone = ", ".join(SKIN_TONES.get(code, code) for code in key.split("-"))
                    variants.append((variation, tone))
        for item, tone in variants:
            path = images / item["image"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found, though emoji.json says emoji {item['unified']} has one")
            row = {"image": path}
            if captions:
                row[options.text_column] = caption_of(entry, options, tone)
            row["label"] = lookup[entry["category"]]
            if options.metadata:
                row |= {
                    "category": entry["category"],
                    "subcategory": entry["subcategory"],
                    "unified": item["unified"],
                    "short_name": entry["short_name"],
                }
            rows.append(row)
    if options.limit:
        rows = rows[: options.limit]
    kept = COLUMNS if options.metadata else ["image", "text", "label"]
    columns = [options.text_column if c == "text" else c for c in kept if captions or c != "text"]
    return Source(rows, list(CATEGORIES), origin=str(folder / "emoji.json"), columns=columns)
