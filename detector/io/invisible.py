"""Which characters show nothing on their own: a text made only of them is empty.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import bisect
import unicodedata

# (first, last) code points, inclusive, of Default_Ignorable_Code_Point.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),    # SOFT HYPHEN
    (0x034F, 0x034F),    # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),    # ARABIC LETTER MARK
    (0x115F, 0x1160),    # HANGUL CHOSEONG FILLER, JUNGSEONG FILLER
    (0x17B4, 0x17B5),    # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),    # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),    # ZERO WIDTH SPACE .. RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),    # bidi embeddings and overrides
    (0x2060, 0x206F),    # WORD JOINER, invisible operators, bidi isolates, deprecated
    (0x3164, 0x3164),    # HANGUL FILLER
    (0xFE00, 0xFE0F),    # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),    # ZERO WIDTH NO-BREAK SPACE (byte-order mark)
    (0xFFA0, 0xFFA0),    # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),    # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT controls
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM .. END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, reserved
)
_STARTS = tuple(first for first, _ in DEFAULT_IGNORABLE)
# Fillers that are not default-ignorable but show nothing (see the module docstring).
BLANK_FILLERS = frozenset("\u2800")  # BRAILLE PATTERN BLANK


def default_ignorable(ch: str) -> bool:
    """Whether `ch` has the Unicode property Default_Ignorable_Code_Point."""
    cp = ord(ch)
    i = bisect.bisect_right(_STARTS, cp) - 1
    return i >= 0 and cp <= DEFAULT_IGNORABLE[i][1]


def visible(ch: str) -> bool:
    """Whether `ch` shows something by itself (see the module docstring)."""
    if ch.isspace() or not ch.isprintable():
        return False
    if ch < "\u00ad":
        return True  # printable ASCII and Latin-1 before the soft hyphen: the common case
    return not (default_ignorable(ch) or ch in BLANK_FILLERS
                or unicodedata.category(ch) in ("Mn", "Me"))


def has_visible(text: str) -> bool:
    """False for text made only of invisible characters (whitespace, default-ignorable
    code points, blank fillers, combining marks with no base)."""
    return any(visible(ch) for ch in text)
