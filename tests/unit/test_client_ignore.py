"""`.tesseraignore` (gitignore syntax) and the built-in ignores."""

from __future__ import annotations

import pytest

from tessera_client.ignore import IgnoreRules


@pytest.mark.parametrize(
    "path",
    [
        ".DS_Store",
        "a/.DS_Store",
        "Thumbs.db",
        "~$report.docx",
        "x/.notes.txt.swp",
        ".tesseraignore",
        ".tessera-tmp-123-ab",
        "deep/.tessera-tmp-1",
        ".tessera-folder",
        "sub/.tesseraignore",
        ".tessera/local/state.db",
        "a/~$lock/b",
    ],
)
def test_builtin_ignores(path: str) -> None:
    assert IgnoreRules().ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "report.docx",
        "a/b.txt",
        "tessera.txt",
        "swp",
        "Thumbs.db.txt",
        ".tesseract",  # a user's own names that begin as the client's do
        "a/.tessera-notes.md",
        ".tesseraignore.bak",
    ],
)
def test_ordinary_files_are_synced(path: str) -> None:
    assert not IgnoreRules().ignored(path)


def test_litter_is_what_programs_leave_not_what_the_user_wrote() -> None:
    """A folder deleted elsewhere is removed here with its litter: a `.tesseraignore` the
    user wrote in it is no litter (nor was their `.tesseract`, once ignored as `.tessera*`)."""
    assert IgnoreRules.is_litter(".DS_Store") and IgnoreRules.is_litter(".tessera-tmp-1.ab")
    assert not IgnoreRules.is_litter(".tesseraignore")
    assert not IgnoreRules.is_litter(".tesseract")
    # vim's swap files hold the unsaved work it recovers a crash from: never synced, but
    # removed with a folder deleted elsewhere, they were its only copy
    for swap in (".notes.txt.swp", ".notes.txt.swx"):
        assert IgnoreRules().ignored(swap) and not IgnoreRules.is_litter(swap)


def test_user_patterns_follow_gitignore_rules() -> None:
    rules = IgnoreRules.from_text("# comment\n*.log\nbuild/\n/top.txt\n!keep.log\n")
    assert rules.ignored("x.log") and rules.ignored("a/b/y.log")
    assert not rules.ignored("keep.log")
    assert rules.ignored("build", is_dir=True) and rules.ignored("build/out.bin")
    assert not rules.ignored("build")  # a file named build is not the folder pattern
    assert rules.ignored("top.txt") and not rules.ignored("sub/top.txt")


def test_a_tesseraignore_cannot_sync_what_is_ignored_built_in() -> None:
    rules = IgnoreRules.from_text("!.DS_Store\n!*.swp\n*.log\n")
    assert rules.ignored(".DS_Store") and rules.ignored("a/b.swp")
    assert rules.ignored("x.log") and not rules.ignored("x.txt")


def test_an_ignored_folder_covers_everything_below_it() -> None:
    rules = IgnoreRules.from_text("build/\n*.tmp\n")
    assert rules.covers("build/out/x.o")
    assert rules.covers("src/x.tmp/inside.c")
    assert rules.covers("a/.DS_Store/b")
    assert rules.covers("build", is_dir=True)
    assert not rules.covers("src/build.c")
    assert not rules.covers("src/main.c")
