"""The spam_assassin source: email parsing, the stable split, labels, per-class limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmssl.datasets.npm import find_npm_package
from mmssl.datasets.spam_assassin import PACKAGE, SpamAssassinOptions, load_spam_assassin, message_text

RAW_HTML = (
    "From someone@example.com Thu Aug 22 13:17:22 2002\n"
    "Subject: Cheap   offer\n"
    "Content-Type: text/html; charset=default\n\n"
    "<html><style>p {color: red}</style><body><p>Buy&nbsp;now &amp; save</p></body></html>\n"
)
RAW_MULTIPART = (
    "Subject: Re: build\n"
    'Content-Type: multipart/mixed; boundary="XX"\n\n'
    "--XX\nContent-Type: text/plain\n\nThe ia64 build\n  is broken.\n"
    "--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAAA\n--XX--\n"
)


def test_message_text_keeps_subject_and_body_text_only() -> None:
    # An unknown charset name ("default") falls back to latin-1; style blocks and tags go, entities are decoded.
    assert message_text(RAW_HTML) == "Cheap offer Buy now & save"
    assert message_text(RAW_MULTIPART) == "Re: build The ia64 build is broken."


def fake_package(root: Path, per_group: int = 10) -> Path:
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        folder = root / "data" / group
        folder.mkdir(parents=True)
        for i in range(per_group):
            body = f"Subject: {group} {i}\n\nmessage {i} of {group}\n"
            (folder / f"{i:05d}.json").write_text(json.dumps({"id": f"{i:05d}", "group": group, "text": body}))
    (root / "package.json").write_text("{}")
    return root


def test_split_is_stable_disjoint_and_labelled(tmp_path: Path) -> None:
    root = str(fake_package(tmp_path / "pkg"))
    train = load_spam_assassin(SpamAssassinOptions(split="train", root=root), tmp_path)
    test = load_spam_assassin(SpamAssassinOptions(split="test", root=root), tmp_path)
    every = load_spam_assassin(SpamAssassinOptions(split="all", root=root), tmp_path)
    keys = lambda source: {(r["group"], r["id"]) for r in source.rows}  # noqa: E731
    assert keys(train).isdisjoint(keys(test)) and keys(train) | keys(test) == keys(every)
    assert len(every) == 50 and 0 < len(test) < 25
    assert train.class_names == ["ham", "spam"]
    assert all(r["label"] == int(r["group"].startswith("spam")) for r in every.rows)
    assert all(r["text"] == f"{r['group']} {int(r['id'])} message {int(r['id'])} of {r['group']}" for r in every.rows)
    again = load_spam_assassin(SpamAssassinOptions(split="train", root=root), tmp_path)
    assert [r["id"] for r in again.rows] == [r["id"] for r in train.rows]


def test_per_class_and_groups(tmp_path: Path) -> None:
    root = str(fake_package(tmp_path / "pkg"))
    capped = load_spam_assassin(SpamAssassinOptions(split="all", per_class=4, root=root), tmp_path)
    assert sorted(r["label"] for r in capped.rows) == [0] * 4 + [1] * 4
    spam_only = load_spam_assassin(SpamAssassinOptions(split="all", groups=["spam-2"], root=root), tmp_path)
    assert {r["group"] for r in spam_only.rows} == {"spam-2"}
    with pytest.raises(FileNotFoundError, match="root .* does not exist"):
        load_spam_assassin(SpamAssassinOptions(root=str(tmp_path / "missing")), tmp_path)


def test_the_real_corpus_has_its_published_size() -> None:
    try:
        find_npm_package(PACKAGE)
    except FileNotFoundError as err:
        pytest.skip(f"{err}")
    every = load_spam_assassin(SpamAssassinOptions(split="all", max_chars=50), Path("."))
    labels = [r["label"] for r in every.rows]
    assert len(every) == 6046 and labels.count(1) == 1896
    test = load_spam_assassin(SpamAssassinOptions(split="test", max_chars=50), Path("."))
    assert len(test) == 1220
