"""The normaliser: every cheap dress of a text folds to the same bytes as the plain text."""

from __future__ import annotations

import re
import sys

import pytest
import regex

from relay.core.normalise import normalise, normalise_mapped, normalise_utf8

PLAIN = "The embargo on CVE-2024-10220 is lifted on Tuesday."
FOLDED = "the embargo on cve-2024-10220 is lifted on tuesday."


@pytest.mark.parametrize(
    "dressed",
    [
        PLAIN,
        PLAIN.upper().replace("CVE-2024-10220", "cve-2024-10220"),
        "The em\u200bbar\u200cgo on CVE-2024-10220 is lif\u00adted on Tues\u2060day.",  # invisible
        "The \u202eembargo\u202c on CVE-2024-10220 is lifted on Tuesday\ufe0f.",  # bidi, VS16
        "The embargo on CVE\u20102024\u201010220 is lifted on Tuesday.",  # Unicode hyphens
        "ＴＨＥ ｅｍｂａｒｇｏ on CVE-2024-10220 is lifted on Tuesday.",  # fullwidth
        "The \U0001d41e\U0001d426\U0001d41b\U0001d41a\U0001d42b\U0001d420\U0001d428 on "
        "CVE-2024-10220 is lifted on Tuesday.",  # mathematical bold
        "Thе еmbаrgо оn СVЕ-2024-10220 іѕ lіftеd оn Тuеѕdау.",  # Cyrillic
        "ΤΗΕ embargο ΟΝ CVE-2024-10220 is lifted on Tuesday.",  # Greek capitals
        "The e\u0301\u0300mbargo on CVE-2024-10220 is lifted on Tuesday.",  # stacked marks
        "The embargo on CVE-2024-10220 is lifted on Tuesday\x01.",  # a control character
    ],
)
def test_dresses_of_a_sentence_fold_to_the_plain_sentence(dressed: str) -> None:
    assert normalise(dressed) == FOLDED


def test_unicode_spaces_and_tabs_become_one_space_each() -> None:
    spaced = "The\u00a0embargo\u2009on\u3000CVE-2024-10220\tis\u202flifted\u205fon Tuesday."
    assert normalise(spaced) == FOLDED
    assert normalise("one\u2028two\u2029three\x85four") == "one\ntwo\nthree\nfour"


def test_every_default_ignorable_code_point_is_removed() -> None:
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    ignorable = regex.findall(r"\p{Default_Ignorable_Code_Point}", everything)
    assert len(ignorable) > 4000  # zero-width characters, bidi controls, selectors, tags
    glued = "em" + "".join(ignorable) + "bargo"
    assert normalise(glued) == "embargo"


def test_letter_spaced_words_are_joined_and_keep_their_gaps() -> None:
    assert normalise(" ".join("The embargo is lifted")) == "the embargo is lifted"
    assert normalise("E M B A R G O  lifted") == "embargo  lifted"
    # Letters spaced wider, words wider still (over twice the narrowest gap).
    assert normalise("e  m  b  a  r  g  o     i \t s") == "embargo     is"
    # Re-wrapped and quoted: a line break inside a run, with the reply's quoting marks.
    assert normalise("> t h e   e m b a\n> r g o   i s") == "> the embargo is"
    assert normalise("t h e   e m b a\r\nr g o") == "the embargo"
    # A quoted blank line ends a run; so does a word of two letters.
    assert normalise("> a b\n>\n> c d") == "> ab\n>\n> cd"
    assert normalise("x a b cd") == "xab cd"


def test_ascii_is_left_alone_but_for_case() -> None:
    # TR39 folds 0/O, 1/l and rn/m too; here they stay apart, as in ordinary words.
    assert normalise("v1.30 vl.3O modern modem Install") == "v1.30 vl.3o modern modem install"


def test_capital_and_small_homoglyphs_stand_with_their_own_case() -> None:
    # Cyrillic capital I stands with I (TR39 has one class for I and l).
    assert normalise("\u0406nstall") == normalise("Install") == "install"
    # Greek capital nu looks like N, its small letter like v.
    assert normalise("\u039d\u03bd") == "nv"


SAMPLES = [
    PLAIN,
    "Thе еmbаrgо оn СVЕ\u20102024 іѕ lіftеd.\n> q u o t e d\n> t e x t   h e r e",
    "日本語のテキスト mixed with em\u200bbargo and ｆｕｌｌｗｉｄｔｈ",
    "line one a\r\nb c line two\r\n\u00a0\u00a0x y",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_the_mapped_normalisation_gives_the_same_bytes_and_finds_each_word(text: str) -> None:
    data, origins = normalise_mapped(text)

    assert data == normalise_utf8(text) == normalise(text).encode()
    for token in re.finditer(rb"\S+", data):
        original = text[origins.start(token.start()) : origins.end(token.end())]
        # a word of a letter-spaced run is traced to the whole run
        assert token.group() in normalise(original).encode().split(), (original, token.group())
