"""Invisible text (detector.io.invisible): the embedded Default_Ignorable_Code_Point table
and which texts are `empty_text`."""

from __future__ import annotations

import itertools
import unicodedata

import orjson
import pytest

from detector.config import InputSettings
from detector.io import records as rec
from detector.io.invisible import DEFAULT_IGNORABLE, default_ignorable, has_visible
from tests.helpers import FakeRecord

# Members named in DerivedCoreProperties.txt, first and last of several ranges included.
KNOWN_IGNORABLE = "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180e\u180f\u200b\u200f" \
    "\u202a\u202e\u2060\u2064\u2065\u206f\u3164\ufe00\ufe0f\ufeff\uffa0\ufff0\ufff8" \
    "\U0001bca0\U0001bca3\U0001d173\U0001d17a\U000e0000\U000e0001\U000e007f\U000e0100" \
    "\U000e01ef\U000e0fff"
# Neighbours and look-alikes that are not default-ignorable.
NOT_IGNORABLE = "a \u00ac\u00ae\u034e\u0350\u061b\u115e\u1161\u180a\u200a\u2010\u2029" \
    "\u205f\u2070\u2800\u3163\u3165\ufdff\ufe10\ufefe\uff9f\uffa1\ufff9\U0001d172" \
    "\U0001d17b\U000dffff\U000e1000\u0301"


def test_the_table_is_sorted_disjoint_and_holds_known_members() -> None:
    assert all(a <= b < c for (a, b), (c, _) in itertools.pairwise(DEFAULT_IGNORABLE))
    assert [ch for ch in KNOWN_IGNORABLE if not default_ignorable(ch)] == []
    assert [ch for ch in NOT_IGNORABLE if default_ignorable(ch)] == []


def test_every_format_character_below_the_tags_is_either_ignorable_or_known_visible() -> None:
    """Cf characters outside the table are the ones that show (or shape) something:
    a guard against a range typed wrong."""
    shows = {0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605, 0x06DD, 0x070F, 0x0890,
             0x0891, 0x08E2, 0x110BD, 0x110CD, 0x13430, 0x13431, 0x13432, 0x13433, 0x13434,
             0x13435, 0x13436, 0x13437, 0x13438, 0xFFF9, 0xFFFA, 0xFFFB}
    shows |= set(range(0x13439, 0x13440)) | set(range(0x1D173, 0x1D17B))
    cf = [cp for cp in range(0xE0000) if unicodedata.category(chr(cp)) == "Cf"]
    odd = [hex(cp) for cp in cf if not default_ignorable(chr(cp)) and cp not in shows]
    assert odd == []


@pytest.mark.parametrize("text", [
    "\u034f", "\ufe0f\ufe0f", "\u180e", "\u2064", "\u3164", "\u115f", "\u1160", "\uffa0",
    "\u2800\u2800", "\u0301\u0302", "\u20dd", " \u3164 \u200b\n\u2800\u0301 ",
    "\U000e0041\U000e0042", "\u00ad",
])
def test_texts_of_invisible_characters_are_empty(text: str) -> None:
    assert not has_visible(text)
    out = rec.decode(FakeRecord(orjson.dumps({"text": text})), InputSettings())
    assert isinstance(out, rec.DeadLetter)
    assert out.reason == "empty_text"


@pytest.mark.parametrize("text", ["a", "e\u0301", "\u3164hi", "\u2801", "🙂\ufe0f", "不",
                                  "\u0915\u094d", "١"])
def test_a_visible_character_anywhere_keeps_the_text_as_it_is(text: str) -> None:
    assert has_visible(text)
    out = rec.decode(FakeRecord(orjson.dumps({"text": text})), InputSettings())
    assert isinstance(out, rec.Comment)
    assert out.text == text
