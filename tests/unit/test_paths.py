"""Path canonicalisation and keys (tessera.domain.paths)."""

from __future__ import annotations

import re
import unicodedata

import pytest

from tessera.domain import paths
from tessera.domain.errors import InvalidPath


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a", "/a"),
        ("/a/b/", "/a/b"),
        ("/Docs/Report.PDF", "/Docs/Report.PDF"),
        ("/caf\u0065\u0301", "/caf\u00e9"),  # NFD → NFC
        ("/a b/c d", "/a b/c d"),
        ("/..a/b..", "/..a/b.."),  # dots inside names are fine
    ],
)
def test_canonical_accepts(raw: str, want: str) -> None:
    assert paths.canonical(raw) == want


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("a/b", "start with '/'"),
        ("/a/../b", "'..'"),
        ("/..", "'..'"),
        ("/a/./b", "'.'"),
        ("/a//b", "empty component"),
        ("//etc/passwd", "empty component"),
        ("/a\x00b", "NUL"),
        ("/a\nb", "control"),
        ("/a\\..\\b", "backslash"),
        ("C:\\Windows", "start with '/'"),
        ("/" + "x" * 256, "longer than 255"),
        ("/" + "é" * 128, "longer than 255"),  # 256 UTF-8 bytes
        ("/" + "/".join(["d" * 200] * 21), "longer than 4096 bytes"),  # a view path's limit
        ("/" + "/".join(["\u0587" * 127] * 10), "longer than 4096 bytes once case-folded"),
    ],
)
def test_canonical_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidPath) as info:
        paths.canonical(raw)
    assert info.value.status == 422
    assert info.value.code == "invalid_path"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("name", "code_point"),
    [
        ("invoice\u202efdp.exe", "U+202E"),  # reads as "invoiceexe.pdf"
        ("a\u202ab", "U+202A"),
        ("a\u2066b\u2069", "U+2066"),
        ("two\u2028lines", "U+2028"),
        ("two\u2029paras", "U+2029"),
        ("next\u0085line", "U+0085"),
    ],
)
def test_a_write_may_not_name_what_disguises_how_a_name_reads(name: str, code_point: str) -> None:
    assert paths.canonical("/d/" + name) == "/d/" + name  # still addressable to read
    with pytest.raises(InvalidPath, match=re.escape(code_point)) as info:
        paths.target("/d/" + name, field="to_path")
    assert info.value.status == 422 and info.value.details["field"] == "to_path"


@pytest.mark.parametrize(
    "name", ["\u05e9\u05dc\u05d5\u05dd\u200f.txt", "\U0001f468\u200d\U0001f469.png"]
)
def test_right_to_left_marks_and_emoji_joiners_are_plain_names(name: str) -> None:
    assert paths.target("/" + name) == "/" + name


def test_a_stored_path_has_half_a_view_paths_length() -> None:
    """A view path is a mount's path and a stored path below it, each up to 2048 bytes."""
    stored = "/" + "/".join(["d" * 200] * 10) + "/" + "e" * 37  # 2048 bytes
    assert paths.length_problem(stored) is None
    assert paths.length_problem(stored + "e") == "longer than 2048 bytes"
    assert paths.length_problem("/" + "/".join(["\u0587" * 127] * 5)) == (
        "longer than 2048 bytes once case-folded"
    )
    assert paths.canonical(stored + "/" + stored[1:]) == stored + "/" + stored[1:]


def test_a_write_may_name_a_path_at_most_max_depth_names_deep() -> None:
    """A commit makes every missing folder above its file: a 2 KB path of one-letter
    folders made 1,022 rows. Reads of a deeper entry stored before the rule still work."""
    deepest = "/a" * paths.MAX_DEPTH
    assert paths.target(deepest) == deepest
    with pytest.raises(InvalidPath, match=f"more than {paths.MAX_DEPTH} names deep"):
        paths.target(deepest + "/f")
    assert paths.canonical(deepest + "/f") == deepest + "/f"


def test_name_of_255_bytes_is_fine() -> None:
    assert paths.canonical("/" + "x" * 255) == "/" + "x" * 255


def test_case_and_unicode_twins_share_a_key() -> None:
    nfc = "/Café/Straße.txt"
    nfd = unicodedata.normalize("NFD", "/CAFÉ/STRASSE.TXT")
    assert paths.path_key(paths.canonical(nfc)) == paths.path_key(paths.canonical(nfd))
    assert paths.path_key("/A") != paths.path_key("/B")


def test_helpers() -> None:
    assert paths.parent("/a/b/c") == "/a/b"
    assert paths.parent("/a") == "/"
    assert paths.name("/a/b.txt") == "b.txt"
    assert paths.name("/") == ""
    assert paths.ancestors("/a/b/c") == ["/a", "/a/b"]
    assert paths.ancestors("/a") == []
    assert paths.join("/", "/x") == "/x"
    assert paths.join("/Team", "/x") == "/Team/x"
    assert paths.join("/Team", "/") == "/Team"
    assert paths.is_within("/a/b", "/a") and paths.is_within("/a", "/a")
    assert not paths.is_within("/ab", "/a")
    assert paths.relative("/Team/x/y", "/Team") == "/x/y"
    assert paths.relative("/Team", "/Team") == "/"


def test_subtree_range_is_exactly_the_subtree() -> None:
    lo, hi = paths.subtree_range("/a")
    inside = ["/a/b", "/a/b/c", "/a/\uffff"]
    outside = ["/a", "/a0", "/ab", "/a.b", "/b", "/"]
    assert all(lo <= k < hi for k in inside)
    assert not any(lo <= k < hi for k in outside)
    lo, hi = paths.subtree_range("/")
    assert all(lo <= k < hi for k in ["/a", "/z/y"])  # "/" itself is never stored
