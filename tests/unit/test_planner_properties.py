"""Property tests of the planner: random correlated trees, apply the plan in a model, check.

Invariants: the plan applies cleanly (every step finds what it expects, folders exist
before files go into them), all three trees converge, a second plan is empty, and no
content is ever dropped — local content is only deleted or overwritten when the server
already holds it (current or in history), and every local edit ends up in the tree. A path
that is a file on one side and a folder on the other converges over a few rounds, with the
same guarantees.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera_client.paths import ancestors, is_under, parent_of, path_key
from tessera_client.planner import Entry, EntryKind, OpKind, plan

FOLDERS = ["a", "a/b", "c", "ü"]
NAMES = ["x.txt", "y", "Zed.md", "é.bin"]
FILE_PATHS = [f"{d}/{n}" if d else n for d in ["", *FOLDERS] for n in NAMES]
# Files named as folders are: a path that is a file on one side and a folder on the other
CLASHING_PATHS = [*FILE_PATHS, "a", "a/b", "c"]
CONTENTS = [f"h{i}" for i in range(6)]
DAY = date(2026, 11, 26)

Trees = tuple[dict[str, Entry], dict[str, Entry], dict[str, Entry]]


def _folder(path: str, **kw: object) -> Entry:
    return Entry(path, EntryKind.FOLDER, **kw)  # type: ignore[arg-type]


def _with_folders(files: dict[str, Entry], extra: list[str], remote: bool) -> dict[str, Entry]:
    tree = dict(files)
    for e in list(files.values()):
        for a in ancestors(e.path):
            tree.setdefault(path_key(a), _folder(a, file_id=f"d:{a}" if remote else ""))
    for folder in extra:
        for a in [*ancestors(folder), folder]:
            tree.setdefault(path_key(a), _folder(a, file_id=f"d:{a}" if remote else ""))
    return tree


def _valid(files: dict[str, Entry], extra: list[str]) -> tuple[dict[str, Entry], list[str]]:
    """A tree a disk can hold: no file where another entry needs a folder (those files go)."""
    folders = {
        path_key(a) for p in [*(e.path for e in files.values()), *extra] for a in ancestors(p)
    }
    folders |= {path_key(f) for f in extra}
    return {k: e for k, e in files.items() if k not in folders}, extra


@st.composite
def correlated_trees(draw: st.DrawFn, paths: list[str] = FILE_PATHS) -> Trees:
    ids = itertools.count(1)
    inodes = itertools.count(100)
    base_paths = draw(st.lists(st.sampled_from(paths), unique=True, max_size=8))
    base_files: dict[str, Entry] = {}
    for p in base_paths:
        base_files[path_key(p)] = Entry(
            p,
            content_hash=draw(st.sampled_from(CONTENTS)),
            file_id=f"f{next(ids)}",
            rev=draw(st.integers(1, 3)),
            inode=next(inodes),
        )
    base_extra = draw(st.lists(st.sampled_from(FOLDERS), max_size=2))
    base_files, base_extra = _valid(base_files, base_extra)

    def side(is_remote: bool) -> dict[str, Entry]:
        files: dict[str, Entry] = {}
        free = [p for p in paths if path_key(p) not in base_files]
        for k, b in base_files.items():
            action = draw(st.sampled_from(["keep", "keep", "edit", "delete", "move"]))
            if action == "keep":
                files[k] = b
            elif action == "edit":
                content = draw(st.sampled_from(CONTENTS))
                files[k] = replace(b, content_hash=content, rev=b.rev + 1)
                if not is_remote:
                    files[k] = replace(files[k], rev=0, inode=next(inodes))
            elif action == "move" and free:
                dst = draw(st.sampled_from(free))
                free.remove(dst)
                files[path_key(dst)] = replace(b, path=dst)
        for p in draw(st.lists(st.sampled_from(free), unique=True, max_size=3)):
            files[path_key(p)] = Entry(
                p,
                content_hash=draw(st.sampled_from(CONTENTS)),
                file_id=f"f{next(ids)}" if is_remote else "",
                rev=1 if is_remote else 0,
                inode=0 if is_remote else next(inodes),
            )
        kept = [f for f in base_extra if draw(st.booleans())]
        extra = kept + draw(st.lists(st.sampled_from(FOLDERS), max_size=2))
        if not is_remote:
            files = {k: replace(e, file_id="", rev=0) for k, e in files.items()}
        else:
            files = {k: replace(e, inode=0) for k, e in files.items()}
        return _with_folders(*_valid(files, extra), is_remote)

    local = side(False)
    remote = side(True)
    base = _with_folders(base_files, base_extra, True)
    return local, remote, base


class Model:
    """The three trees plus the server's history, and how each operation changes them."""

    def __init__(self, local: dict[str, Entry], remote: dict[str, Entry], base: dict[str, Entry]):
        self.local, self.remote, self.base = dict(local), dict(remote), dict(base)
        self.history = {e.content_hash for e in [*remote.values(), *base.values()] if e.is_file}
        self.ids = itertools.count(10_000)

    def _parent_exists(self, tree: dict[str, Entry], path: str) -> None:
        parent = parent_of(path)
        if parent:
            folder = tree.get(path_key(parent))
            assert folder is not None, f"folder {parent!r} missing for {path!r}"
            assert not folder.is_file, f"{parent!r} is a file, not a folder for {path!r}"

    def _drop_local(self, key: str) -> None:
        """Remove or overwrite local content: only allowed when the server holds it."""
        old = self.local.get(key)
        if old is not None and old.is_file:
            assert old.content_hash in self.history, f"local content of {old.path} dropped"

    def _upload(self, path: str, lo: Entry, parent: Entry | None) -> None:
        key = path_key(path)
        current = self.remote.get(key)
        assert (current.rev if current else None) == (parent.rev if parent else None)
        assert current is None or parent is not None
        self._parent_exists(self.remote, path)
        new = Entry(
            path,
            content_hash=lo.content_hash,
            file_id=current.file_id if current else f"f{next(self.ids)}",
            rev=current.rev + 1 if current else 1,
        )
        self.remote[key] = new
        self.base[key] = new
        self.history.add(new.content_hash)

    def _download(self, path: str, r: Entry) -> None:
        key = path_key(path)
        self._parent_exists(self.local, path)
        assert key not in self.local or self.local[key].is_file, f"a folder at {path!r}"
        self._drop_local(key)
        self.local[key] = Entry(path, content_hash=r.content_hash, inode=next(self.ids))
        self.base[key] = r

    def apply(self, ops: list) -> None:  # type: ignore[type-arg]
        for op in ops:
            key = path_key(op.path)
            if op.kind == OpKind.UPLOAD:
                assert self.local[key] == op.local
                self._upload(op.path, self.local[key], op.remote)
            elif op.kind == OpKind.DOWNLOAD:
                assert self.local.get(key) == op.local
                assert self.remote[key] == op.remote
                self._download(op.path, op.remote)
            elif op.kind == OpKind.DELETE_LOCAL:
                self._drop_local(key)
                del self.local[key]
                self.base.pop(key)
            elif op.kind == OpKind.DELETE_REMOTE:
                assert self.remote[key] == op.remote
                del self.remote[key]
                self.base.pop(key)
            elif op.kind in (OpKind.MOVE_LOCAL, OpKind.MOVE_REMOTE):
                src = path_key(op.src)
                tree = self.local if op.kind == OpKind.MOVE_LOCAL else self.remote
                assert key not in tree
                self._parent_exists(tree, op.path)
                tree[key] = replace(tree.pop(src), path=op.path)
                self.base[key] = replace(self.base.pop(src), path=op.path)
            elif op.kind == OpKind.MOVE_RECORD:
                src = path_key(op.src)
                assert src not in self.local and src not in self.remote
                assert self.local[key] == op.local and key in self.remote
                self.base[key] = replace(self.base.pop(src), path=op.path)
            elif op.kind in (OpKind.CREATE_FOLDER_LOCAL, OpKind.CREATE_FOLDER_REMOTE):
                tree = self.local if op.kind == OpKind.CREATE_FOLDER_LOCAL else self.remote
                self._parent_exists(tree, op.path)
                assert key not in tree or not tree[key].is_file, f"a file at {op.path!r}"
                tree.setdefault(key, _folder(op.path))
                self.base[key] = _folder(op.path)
            elif op.kind in (OpKind.DELETE_FOLDER_LOCAL, OpKind.DELETE_FOLDER_REMOTE):
                tree = self.local if op.kind == OpKind.DELETE_FOLDER_LOCAL else self.remote
                assert not any(k.startswith(key + "/") for k in tree), "folder not empty"
                del tree[key]
                self.base.pop(key, None)
            elif op.kind == OpKind.CONFLICT:
                lo = self.local[key]
                assert lo == op.local
                copy_key = path_key(op.copy_path)
                assert copy_key not in self.local and copy_key not in self.remote
                self.local[copy_key] = replace(lo, path=op.copy_path)
                self._upload(op.copy_path, lo, None)
                self.history.add(lo.content_hash)
                self._download(op.path, op.remote)
            elif op.kind == OpKind.SET_ASIDE:
                lo = self.local[key]
                assert lo == op.local
                copy_key = path_key(op.copy_path)
                assert copy_key not in self.local and copy_key not in self.remote
                for k in [k for k in self.local if k == key or is_under(k, key)]:
                    e = self.local.pop(k)
                    moved = op.copy_path + e.path[len(lo.path) :]
                    self.local[path_key(moved)] = replace(e, path=moved)
                for k in [k for k in self.base if k == key or is_under(k, key)]:
                    del self.base[k]
            elif op.kind == OpKind.RECORD:
                assert self.local[key].content_hash == self.remote[key].content_hash
                self.base[key] = self.remote[key]
            elif op.kind == OpKind.FORGET:
                assert key not in self.local and key not in self.remote
                self.base.pop(key, None)
            else:
                raise AssertionError(f"unexpected {op}")

    def view(self, tree: dict[str, Entry]) -> dict[str, tuple[str, str]]:
        return {k: (e.kind.value, e.content_hash) for k, e in tree.items()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(correlated_trees())
def test_plan_converges_and_drops_nothing(trees: Trees) -> None:
    local, remote, base = trees
    edits = {e.content_hash for e in local.values() if e.is_file}
    model = Model(local, remote, base)
    first = plan(local, remote, base, device="dev", day=DAY)
    model.apply(first.ops)

    assert model.view(model.local) == model.view(model.remote) == model.view(model.base)
    final = {e.content_hash for e in model.local.values() if e.is_file}
    for content in edits:
        assert content in final or content in model.history
    again = plan(model.local, model.remote, model.base, device="dev", day=DAY)
    assert again.ops == []


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(correlated_trees(CLASHING_PATHS))
def test_a_path_of_another_kind_on_each_side_converges_and_drops_nothing(trees: Trees) -> None:
    """A file on one side where the other has a folder (or the base another kind) was
    skipped for good: the new side never synced. Now each round applies cleanly and drops
    nothing, and a few rounds converge (the old kind goes in one, the new one comes in the
    next, the next after uploads a set-aside copy)."""
    local, remote, base = trees
    edits = {e.content_hash for e in local.values() if e.is_file}
    model = Model(local, remote, base)
    for _ in range(4):
        ops = plan(model.local, model.remote, model.base, device="dev", day=DAY).ops
        if not ops:
            break
        model.apply(ops)
    else:
        raise AssertionError(f"no convergence in 4 rounds: {ops}")
    assert model.view(model.local) == model.view(model.remote) == model.view(model.base)
    final = {e.content_hash for e in model.local.values() if e.is_file}
    for content in edits:
        assert content in final or content in model.history


@settings(max_examples=200, deadline=None)
@given(correlated_trees())
def test_plan_is_deterministic(trees: Trees) -> None:
    local, remote, base = trees
    a = plan(local, remote, base, device="dev", day=DAY)
    b = plan(local, remote, base, device="dev", day=DAY)
    assert a == b
