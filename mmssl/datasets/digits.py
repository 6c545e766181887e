"""Digits in two modalities, for binding image and audio through text: ``sklearn_digits`` and ``spoken_digits``;
and ``spoken_commands``, ten command words synthesised the same way.

``sklearn_digits``: the 1797 8x8 handwritten digits bundled with scikit-learn (``load_digits``, no download),
as uint8 images (0..255) with captions such as "a handwritten seven". ``spoken_digits``: the words "zero" ..
"nine" synthesised by espeak-ng (Debian package ``espeak-ng``) in many voices, voice variants, speeds and
pitches, cached as WAV files under the mmssl cache folder; the test split uses voices held out of training, and
may add the 10 recorded Asterisk prompts ``digits/0..9.wav`` (a real human voice). Both sources label a row with
its digit (0..9) and share the class names, so a ``concat`` of them keeps the labels.

``spoken_commands``: the ten keywords of Speech Commands (Warden 2018: "yes", "no", "up", "down", "left",
"right", "on", "off", "stop", "go") synthesised by the same machinery (``load_spoken_words``) with the same voices,
variants, speeds, pitches and held-out test voices; no shipped recipe uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from mmssl.data.sources import Source, SourceOptions, hash_share, register_source

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: The ten keywords of Speech Commands v0.02 (Warden 2018, arXiv:1804.03209), in its order.
COMMAND_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CAPTION_TEMPLATES = [
    "the digit {}",
    "a handwritten {}",
    "the number {}",
    "a {} written by hand",
    "a small image of a {}",
    "a scanned digit {}",
]
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029"]
TEST_VOICES = ["en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4"]
ASTERISK_ROOT = "/usr/share/asterisk/sounds/en"


def mmssl_cache() -> Path:
    """The mmssl cache folder: ``$MMSSL_CACHE`` or ``~/.cache/mmssl``."""
    return Path(os.environ.get("MMSSL_CACHE", Path.home() / ".cache" / "mmssl"))


class SklearnDigitsOptions(SourceOptions):
    split: Literal["train", "test", "all"] = Field("train", description="Hash split of the images by index, or all.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the images in the test split.")
    captions: list[str] = Field(
        default_factory=lambda: list(CAPTION_TEMPLATES),
        min_length=1,
        description="Caption templates with {} for the digit's word; image i uses template i mod len.",
    )
    text_column: str = Field("text", description="Column the caption is written to.")
    upsample: int = Field(1, ge=1, le=8, description="Repeat each pixel n x n times (8x8 -> 8n x 8n).")


@register_source("sklearn_digits", SklearnDigitsOptions)
def load_sklearn_digits(options: SklearnDigitsOptions, base: Path) -> Source:
    """Rows ``{"image": uint8 [8n, 8n], <text_column>: caption, "label": digit}`` in index order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    if options.upsample > 1:
        images = images.repeat(options.upsample, axis=1).repeat(options.upsample, axis=2)
    rows = []
    for i, (image, label) in enumerate(zip(images, data.target, strict=True)):
        in_test = hash_share(f"sklearn_digits/{i}") < options.test_fraction
        if options.split != "all" and in_test != (options.split == "test"):
            continue
        caption = options.captions[i % len(options.captions)].format(DIGIT_WORDS[int(label)])
        rows.append({"image": image, options.text_column: caption, "label": int(label)})
    if options.limit:
        rows = rows[: options.limit]
    origin = f"sklearn_digits(split {options.split})"
    return Source(rows, list(DIGIT_WORDS), origin=origin, columns=["image", options.text_column, "label"])


class SpokenWordsOptions(SourceOptions):
    """Options shared by the espeak-ng word sources (``spoken_digits``, ``spoken_commands``)."""

    split: Literal["train", "test", "all"] = Field(
        "train", description="train: `voices`; test: `test_voices` (held out); all: both."
    )
    voices: list[str] = Field(
        default_factory=lambda: list(TRAIN_VOICES), min_length=1, description="espeak-ng voices of the train split."
    )
    test_voices: list[str] = Field(
        default_factory=lambda: list(TEST_VOICES), description="espeak-ng voices of the test split (held out)."
    )
    variants: list[str] = Field(
        default_factory=lambda: list(VARIANTS),
        min_length=1,
        description="espeak-ng voice variants (`m1`..`m7`, `f1`..`f4`, `klatt`, ...; '' the voice's own).",
    )
    test_variants: list[str] | None = Field(None, description="Variants of the test split; None: `variants`.")
    speeds: list[int] = Field(
        default_factory=lambda: [130, 175], min_length=1, description="Speaking rates in words per minute (-s)."
    )
    pitches: list[int] = Field(default_factory=lambda: [30, 50, 70], min_length=1, description="Pitches 0..99 (-p).")
    cache: str | None = Field(None, description="Folder of the synthesised WAVs; default <mmssl cache>/spoken-<words>.")
    workers: int = Field(2, ge=1, description="espeak-ng processes run at once when filling the cache.")
    metadata: bool = Field(
        True,
        description="Also write the columns text (the word, i.e. the label) and voice; false keeps only audio and "
        "label (what `mmssl init` should see, so it does not pair each clip with its own label).",
    )

    @model_validator(mode="after")
    def _check(self) -> SpokenWordsOptions:
        shared = sorted(set(self.voices) & set(self.test_voices))
        if shared:
            raise ValueError(f"voices {shared} are in both `voices` and `test_voices`; test voices must be held out")
        if any(not 80 <= s <= 450 for s in self.speeds):
            raise ValueError(f"speeds must lie in 80..450 words per minute, got {self.speeds}")
        if any(not 0 <= p <= 99 for p in self.pitches):
            raise ValueError(f"pitches must lie in 0..99, got {self.pitches}")
        return self


class SpokenDigitsOptions(SpokenWordsOptions):
    split: Literal["train", "test", "all"] = Field(
        "train", description="train: `voices`; test: `test_voices` (held out) and the Asterisk digits; all: both."
    )
    cache: str | None = Field(None, description="Folder of the synthesised WAVs; default <mmssl cache>/spoken-digits.")
    asterisk_digits: bool = Field(
        False, description="Add the 10 recorded Asterisk prompts digits/0..9 (a human voice) to the test split."
    )
    asterisk_root: str = Field(ASTERISK_ROOT, description="Asterisk sound folder holding digits/0.wav .. 9.wav.")


class SpokenCommandsOptions(SpokenWordsOptions):
    cache: str | None = Field(
        None, description="Folder of the synthesised WAVs; default <mmssl cache>/spoken-commands."
    )


def voice_name(voice: str, variant: str) -> str:
    """espeak-ng's ``-v`` argument: ``en-us`` or ``en-us+f3``."""
    return f"{voice}+{variant}" if variant else voice


def clip_path(root: Path, voice: str, variant: str, speed: int, pitch: int, word: str) -> Path:
    return root / voice_name(voice, variant) / f"s{speed}_p{pitch}" / f"{word}.wav"


@cache
def espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(language names, variant names) espeak-ng knows, from ``--voices`` and ``--voices=variant``."""

    def table(arg: str) -> list[list[str]]:
        out = subprocess.run(["espeak-ng", arg], capture_output=True, text=True, check=True).stdout
        return [line.split() for line in out.splitlines()[1:] if line.split()]

    languages = {cols[1] for cols in table("--voices")}
    variants = {cols[4].removeprefix("!v/") for cols in table("--voices=variant") if len(cols) > 4}
    return frozenset(languages), frozenset(variants)


def synthesise(path: Path, voice: str, speed: int, pitch: int, word: str) -> None:
    """Write espeak-ng's WAV (22.05 kHz mono) of ``word`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.wav")
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(tmp), word]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"espeak-ng failed for {' '.join(cmd)}: {result.stderr.strip()}")
    tmp.replace(path)


def fill_cache(clips: list[tuple[Path, str, int, int, str]], workers: int) -> None:
    """Synthesise the clips whose WAV is not cached yet; checks voices and variants first."""
    missing = [c for c in clips if not c[0].is_file()]
    if not missing:
        return
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError(
            f"{len(missing)} spoken digits are not cached (e.g. {missing[0][0]}) and espeak-ng is not installed: "
            "`apt-get install espeak-ng` (scripts/install-data.sh)"
        )
    languages, variants = espeak_voices()
    for _, voice, *_ in missing:
        language, _, variant = voice.partition("+")
        if language not in languages:
            raise ValueError(f"espeak-ng has no voice {language!r}; see `espeak-ng --voices=en`")
        if variant and variant not in variants:
            raise ValueError(f"espeak-ng has no voice variant {variant!r}; see `espeak-ng --voices=variant`")
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda c: synthesise(*c), missing))


def load_spoken_words(words: list[str], options: SpokenWordsOptions, base: Path, name: str) -> Source:
    """Rows ``{"audio": wav Path, "text": word, "label": index in words, "voice": espeak voice}`` (``text`` and
    ``voice`` only with ``metadata``), ordered by (voice, variant, speed, pitch, word); missing WAVs are
    synthesised into the cache (default ``<mmssl cache>/spoken-<name>``) first, about 30 ms each."""
    root = Path(options.cache) if options.cache else mmssl_cache() / f"spoken-{name}"
    root = root if root.is_absolute() else base / root
    splits = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[options.split]
    combos = []
    for split in splits:
        voices = options.voices if split == "train" else options.test_voices
        variants = options.variants if split == "train" else (options.test_variants or options.variants)
        combos += list(product(voices, variants, options.speeds, options.pitches))
    clips, rows = [], []
    for voice, variant, speed, pitch in combos:
        for index, word in enumerate(words):
            path = clip_path(root, voice, variant, speed, pitch, word)
            clips.append((path, voice_name(voice, variant), speed, pitch, word))
            rows.append(_row(options, path, word, index, voice_name(voice, variant)))
    fill_cache(clips, options.workers)
    return Source(rows, list(words), origin=f"spoken_{name}({root}; split {options.split})", columns=_columns(options))


def _row(options: SpokenWordsOptions, audio: Path, word: str, label: int, voice: str) -> dict[str, Any]:
    if options.metadata:
        return {"audio": audio, "text": word, "label": label, "voice": voice}
    return {"audio": audio, "label": label}


def _columns(options: SpokenWordsOptions) -> list[str]:
    return ["audio", "text", "label", "voice"] if options.metadata else ["audio", "label"]


def _limited(name: str, source: Source, rows: Sequence[dict[str, Any]], options: SpokenWordsOptions) -> Source:
    """``source`` with ``rows``, the first ``options.limit`` of them; refuses a split that ends up empty."""
    rows = rows[: options.limit] if options.limit else rows
    if not rows:
        raise ValueError(f"{name} split {options.split}: no voices given")
    return Source(rows, source.class_names, origin=source.origin, columns=source.columns)


@register_source("spoken_digits", SpokenDigitsOptions)
def load_spoken_digits(options: SpokenDigitsOptions, base: Path) -> Source:
    """Rows ``{"audio": wav Path, "text": word, "label": digit, "voice": espeak voice or "asterisk"}``.

    Synthesised rows are ordered by (voice, variant, speed, pitch, digit); missing WAVs are synthesised into the
    cache first (about 30 ms each). The Asterisk recordings, when asked for, come last in the test split.
    """
    source = load_spoken_words(DIGIT_WORDS, options, base, "digits")
    rows = list(source.rows)
    if options.asterisk_digits and options.split != "train":
        folder = Path(options.asterisk_root) / "digits"
        files = [folder / f"{d}.wav" for d in range(10)]
        if not all(f.is_file() for f in files):
            raise FileNotFoundError(
                f"Asterisk digits {folder}/0..9.wav not found; install Debian's asterisk-core-sounds-en-wav, set "
                "`asterisk_root`, or set `asterisk_digits: false`"
            )
        rows += [_row(options, f, DIGIT_WORDS[d], d, "asterisk") for d, f in enumerate(files)]
    return _limited("spoken_digits", source, rows, options)


@register_source("spoken_commands", SpokenCommandsOptions)
def load_spoken_commands(options: SpokenCommandsOptions, base: Path) -> Source:
    """Rows ``{"audio": wav Path, "text": word, "label": index in COMMAND_WORDS, "voice": espeak voice}``; the
    class names are ``COMMAND_WORDS`` (yes, no, up, down, left, right, on, off, stop, go)."""
    source = load_spoken_words(COMMAND_WORDS, options, base, "commands")
    return _limited("spoken_commands", source, source.rows, options)
