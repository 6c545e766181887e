"""Training and loading ``tokenizers`` tokenizers, and finding their special tokens."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Roles a tokenizer may fill, in the order the config files are consulted, and the names tried in the
# vocabulary when no config file names the role (BERT style first, then RoBERTa style).
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "pad": ("pad_token",),
    "mask": ("mask_token",),
    "cls": ("cls_token", "bos_token"),
    "sep": ("sep_token", "eos_token"),
    "unk": ("unk_token",),
}
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "mask": ("[MASK]", "<mask>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "unk": ("[UNK]", "<unk>"),
}
_REQUIRED = ("pad", "mask")


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or lacks a token the text plugin needs; the message names the file."""


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of a tokenizer, as strings and ids.

    Attributes:
        pad: Padding token (required).
        mask: MLM mask token (required).
        cls: Token opening a sequence, or None.
        sep: Token closing a sequence, or None.
        unk: Unknown-word token, or None.
        pad_id: Id of ``pad``.
        mask_id: Id of ``mask``.
        cls_id: Id of ``cls`` or None.
        sep_id: Id of ``sep`` or None.
        unk_id: Id of ``unk`` or None.
        special_ids: Every id that is never masked, deleted or drawn as a random replacement: the ones above
            and every added token the tokenizer marks special, sorted.
    """

    pad: str
    mask: str
    cls: str | None
    sep: str | None
    unk: str | None
    pad_id: int
    mask_id: int
    cls_id: int | None
    sep_id: int | None
    unk_id: int | None
    special_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpecialTokens:
        return cls(**{**data, "special_ids": tuple(data["special_ids"])})


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 1,
    lowercase: bool = True,
    strip_accents: bool = False,
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer, the same one for the same texts in every run.

    ``tokenizers``' WordPiece trainer gives the continuation tokens (``##a``) ids in hash-map order, which
    changes from run to run, and breaks ties between equally frequent merges by those ids, so the same texts
    gave different vocabularies (huggingface/tokenizers#1794). Here every continuation token the texts need is
    handed to the trainer up front, sorted, so that the ids and every tie are decided the same way each time;
    they are then ordinary vocabulary entries again, not special tokens.

    Args:
        texts: Training texts (read into a list: they are scanned once before training).
        vocab_size: Vocabulary size, the five special tokens included.
        min_frequency: Minimum count of a merge to keep it.
        lowercase: Lower-case before splitting.
        strip_accents: Strip accents (NFD, then drop combining marks); otherwise texts are NFC-normalised and
            keep them ("año" stays "año").

    Returns:
        A tokenizer whose post-processor wraps every text as ``[CLS] ... [SEP]``; no padding or truncation set.
    """
    texts = list(texts)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    steps: list[normalizers.Normalizer] = [normalizers.NFD() if strip_accents else normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if strip_accents:
        steps.append(normalizers.StripAccents())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuation = continuation_tokens(tokenizer, texts)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + continuation,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(tokenizer.to_str())
    handed_in = set(continuation)
    trained["added_tokens"] = [t for t in trained["added_tokens"] if t["content"] not in handed_in]
    tokenizer = Tokenizer.from_str(json.dumps(trained))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def continuation_tokens(tokenizer: Tokenizer, texts: list[str], prefix: str = "##") -> list[str]:
    """``prefix + c`` for every character ``c`` that follows another within a word of ``texts``, after the
    tokenizer's normalizer and pre-tokenizer, sorted."""
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    characters: set[str] = set()
    for text in set(texts):
        normalized = normalizer.normalize_str(text) if normalizer else text
        for word, _ in pre_tokenizer.pre_tokenize_str(normalized) if pre_tokenizer else [(normalized, None)]:
            characters.update(word[1:])
    return [prefix + c for c in sorted(characters)]


def tokenizer_file(path: str | Path) -> Path:
    """The ``tokenizer.json`` of a tokenizer folder, or ``path`` itself when it is a file."""
    path = Path(path).expanduser()
    if path.is_dir():
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise TokenizerError(f"tokenizer folder {path} has no {TOKENIZER_FILE}")
        return file
    if not path.is_file():
        raise TokenizerError(f"tokenizer {path} not found (expected a folder with {TOKENIZER_FILE} or the file itself)")
    return path


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, SpecialTokens]:
    """Load a ``tokenizer.json`` (or a Hugging Face tokenizer folder) and find its special tokens.

    Special tokens are looked up in the folder's ``special_tokens_map.json`` and ``tokenizer_config.json``
    when present, then by their BERT (``[PAD] [MASK] [CLS] [SEP]``) or RoBERTa (``<pad> <mask> <s> </s>``)
    names in the vocabulary. A tokenizer whose post-processor adds no tokens (none, or the empty template that
    ``transformers`` writes) gets one wrapping texts in its CLS/SEP tokens when both exist.

    Args:
        path: A folder containing ``tokenizer.json`` or the path of such a file.

    Returns:
        The tokenizer (padding and truncation off) and its special tokens.

    Raises:
        TokenizerError: The file is missing or unreadable, or no pad or mask token can be found.
    """
    file = tokenizer_file(path)
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise TokenizerError(f"could not read tokenizer {file}: {err}") from err
    tokenizer.no_padding()
    tokenizer.no_truncation()
    specials = find_special_tokens(tokenizer, _config_tokens(file.parent), origin=str(file))
    adds_nothing = tokenizer.encode("a").ids == tokenizer.encode("a", add_special_tokens=False).ids
    if adds_nothing and specials.cls is not None and specials.sep is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{specials.cls} $A {specials.sep}",
            pair=f"{specials.cls} $A {specials.sep} $B:1 {specials.sep}:1",
            special_tokens=[(specials.cls, specials.cls_id), (specials.sep, specials.sep_id)],
        )
    return tokenizer, specials


def find_special_tokens(tokenizer: Tokenizer, named: dict[str, str] | None = None, origin: str = "") -> SpecialTokens:
    """Find the pad, mask, CLS, SEP and UNK tokens of a tokenizer.

    Args:
        tokenizer: The tokenizer.
        named: Tokens named by configuration files, keyed by role (``pad``, ``mask``, ``cls``, ``sep``, ``unk``).
        origin: Where the tokenizer came from, for error messages.

    Raises:
        TokenizerError: No pad or mask token is in the vocabulary.
    """
    named = named or {}
    found: dict[str, str | None] = {}
    for role, candidates in _CANDIDATES.items():
        tries = ([named[role]] if role in named else []) + list(candidates)
        found[role] = next((tok for tok in tries if tokenizer.token_to_id(tok) is not None), None)
        if found[role] is None and role in _REQUIRED:
            hint = f"; the config names {named[role]!r}, which is not in the vocabulary" if role in named else ""
            raise TokenizerError(
                f"tokenizer {origin or '<in memory>'} has no {role} token (tried {', '.join(tries)}{hint}); "
                f"the text plugin needs a {role} token"
            )
    ids = {role: (None if tok is None else tokenizer.token_to_id(tok)) for role, tok in found.items()}
    special = {i for i in ids.values() if i is not None}
    special |= {i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special}
    return SpecialTokens(
        pad=found["pad"],  # type: ignore[arg-type]
        mask=found["mask"],  # type: ignore[arg-type]
        cls=found["cls"],
        sep=found["sep"],
        unk=found["unk"],
        pad_id=ids["pad"],  # type: ignore[arg-type]
        mask_id=ids["mask"],  # type: ignore[arg-type]
        cls_id=ids["cls"],
        sep_id=ids["sep"],
        unk_id=ids["unk"],
        special_ids=tuple(sorted(special)),
    )


def _config_tokens(folder: Path) -> dict[str, str]:
    """Special tokens named by ``special_tokens_map.json`` and ``tokenizer_config.json`` in a folder."""
    configs: list[dict[str, Any]] = []
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise TokenizerError(f"could not read {file}: {err}") from err
        if isinstance(config, dict):
            configs.append(config)
    named: dict[str, str] = {}
    for role, keys in _CONFIG_KEYS.items():
        tokens = (_token_content(config.get(key)) for key in keys for config in configs)
        token = next((t for t in tokens if t is not None), None)
        if token is not None:
            named[role] = token
    return named


def _token_content(value: Any) -> str | None:
    """A token from a config value: a string or an ``AddedToken`` dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None
