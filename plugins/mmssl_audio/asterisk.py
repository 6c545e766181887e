"""The Asterisk English voice prompts with their transcripts, as the data source ``asterisk_prompts``.

Debian's ``asterisk-core-sounds-en-wav`` installs the prompts (8 kHz mono WAV, some in subfolders such as
``digits/``) under ``/usr/share/asterisk/sounds/en``, and ``asterisk-core-sounds-en`` the transcripts as
``core-sounds-en.txt.gz``: lines ``name: text`` where ``name`` is the file's path below the sound folder without
its extension (``digits/1: one``); lines starting with ``;`` are comments. Bracketed notes are not speech and
are removed (``letters/at: at [@]`` -> ``at``); a transcript that is only a note (``beep: [this is a simple
beep tone]``, ``silence/1: (1 second of silence)``) marks a prompt without speech.

Rows are split into train and test by a hash of the prompt's name, so a prompt's split never depends on what
else is installed.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, hash_share, register_source

SOUNDS_ROOT = "/usr/share/asterisk/sounds/en"
TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_NOTE = re.compile(r"\[[^\]]*\]")
_ONLY_PARENTHESISED = re.compile(r"^\([^)]*\)$")


class AsteriskOptions(SourceOptions):
    roots: list[str] = Field(
        default_factory=lambda: [SOUNDS_ROOT],
        description="Sound folders, searched recursively for .wav/.flac/.ogg; names are paths below the folder.",
    )
    transcripts: list[str] = Field(
        default_factory=lambda: [TRANSCRIPTS],
        description="Transcript files (plain or .gz) with lines `name: text`; later files win on repeated names.",
    )
    split: Literal["train", "test", "all"] = Field("train", description="Hash split of the prompts, or all.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the prompts in the test split.")
    speech_only: bool = Field(
        True, description="Skip prompts whose transcript is only a non-speech note (tones, silence)."
    )


def clean_transcript(text: str) -> str:
    """Drop bracketed notes and a transcript that is only a parenthesised note; collapse whitespace."""
    text = " ".join(_NOTE.sub(" ", text).split())
    return "" if _ONLY_PARENTHESISED.match(text) else text


def read_transcripts(files: list[str | Path]) -> dict[str, str]:
    """``name -> raw transcript`` from ``name: text`` lines (comments ``;`` and blank lines skipped)."""
    out: dict[str, str] = {}
    for file in map(Path, files):
        if not file.is_file():
            raise FileNotFoundError(
                f"Asterisk transcripts {file} not found; install Debian's asterisk-core-sounds-en or set `transcripts`"
            )
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                name, sep, text = line.partition(":")
                if not sep or not name.strip():
                    raise ValueError(f"{file}:{line_no}: expected `name: text`, got {line[:60]!r}")
                out[name.strip()] = text.strip()
    return out


def find_prompts(roots: list[str | Path]) -> dict[str, Path]:
    """``name -> file`` for every audio file below the roots (name: relative path without extension)."""
    found: dict[str, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(
                f"Asterisk sound folder {root} not found; install Debian's asterisk-core-sounds-en-wav or set `roots`"
            )
        for file in sorted(root.rglob("*")):
            if file.suffix.lower() in AUDIO_SUFFIXES and file.is_file():
                found.setdefault(file.relative_to(root).with_suffix("").as_posix(), file)
    return found


@register_source("asterisk_prompts", AsteriskOptions)
def load_asterisk_prompts(options: AsteriskOptions, base: Path) -> Source:
    """Rows ``{"audio": Path, "text": transcript, "name": prompt name}``, sorted by name.

    Relative roots and transcript files are resolved against the recipe's folder. Prompts without a
    transcript are skipped, and so are non-speech ones when ``speech_only``.
    """

    def resolve(path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else base / p

    prompts = find_prompts([resolve(r) for r in options.roots])
    transcripts = read_transcripts([resolve(t) for t in options.transcripts])
    rows = []
    for name in sorted(prompts):
        if name not in transcripts:
            continue
        text = clean_transcript(transcripts[name])
        if not text:
            if options.speech_only:
                continue
            text = transcripts[name]
        in_test = hash_share(name) < options.test_fraction
        if options.split == "all" or in_test == (options.split == "test"):
            rows.append({"audio": prompts[name], "text": text, "name": name})
    if options.limit:
        rows = rows[: options.limit]
    origin = f"asterisk_prompts({', '.join(options.roots)}; split {options.split})"
    if not rows:
        raise ValueError(f"{origin}: no prompt has both an audio file and a transcript")
    return Source(rows, origin=origin, columns=["audio", "text", "name"])
