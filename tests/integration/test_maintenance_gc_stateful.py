"""gc safety, property-tested: random interleavings of commits, deletes, undeletes,
restores of old revisions, abandoned uploads, dedup runs and gc runs at a moving `as_of`,
against real PostgreSQL and the local block store.

Invariant after every step: every block a version names is stored and decodes (canonical
or the version's own staged copy), every copy an open upload holds is still there, and every
file the model says is live downloads to exactly its bytes.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tessera.blocks import block_id, content_hash
from tessera.domain import files, object_keys, uploads
from tessera.domain.models import RestoreRequest, UploadStartRequest

from .conftest import empty_tables
from .test_maintenance_gc import assert_nothing_dangles
from .test_maintenance_world import BLOCK, World, make_world, user

POOL = [secrets.token_bytes(BLOCK) for _ in range(6)]  # shared blocks make dedup and reuse
USERS = [user("ann"), user("ben")]
PATHS = ["/a", "/b", "/c"]
RETENTION_DAYS = 30


def test_gc_never_loses_a_referenced_block(database_url: str, tmp_path: Path) -> None:
    class GcMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            empty_tables(database_url)
            self.gen = make_world(database_url, Path(tempfile.mkdtemp(dir=tmp_path)))
            self.w: World = next(self.gen)
            self.days = 0.0
            # model: live files, trashed files, and the contents of each file's revs
            self.live: dict[tuple[str, str], bytes] = {}
            self.trashed: dict[tuple[str, str], bytes] = {}
            self.history: dict[tuple[str, str], dict[int, bytes]] = {}

        def teardown(self) -> None:
            self.gen.close()

        @rule(
            who=st.integers(0, 1),
            path=st.sampled_from(PATHS),
            blocks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3),
        )
        def commit(self, who: int, path: str, blocks: list[int]) -> None:
            u = USERS[who]
            data = b"".join(POOL[i] for i in blocks)
            if (u.user_id, path) in self.trashed:
                return  # the path holds a trashed file: keep the model simple
            entry = self.w.put(u, path, data)
            self.live[(u.user_id, path)] = data
            self.history.setdefault((u.user_id, path), {})[entry.rev] = data

        @rule(who=st.integers(0, 1), path=st.sampled_from(PATHS))
        def delete(self, who: int, path: str) -> None:
            key = (USERS[who].user_id, path)
            if key in self.live:
                self.w.delete(USERS[who], path)
                self.trashed[key] = self.live.pop(key)

        @rule(who=st.integers(0, 1), path=st.sampled_from(PATHS))
        def undelete(self, who: int, path: str) -> None:
            key = (USERS[who].user_id, path)
            if key in self.trashed:
                entry = files.restore(self.w.svc, USERS[who], RestoreRequest(path=path))
                self.w.revs[key] = entry.rev  # type: ignore[union-attr]
                self.live[key] = self.trashed.pop(key)

        @rule(who=st.integers(0, 1), path=st.sampled_from(PATHS))
        def restore_oldest_rev(self, who: int, path: str) -> None:
            key = (USERS[who].user_id, path)
            if key not in self.live:
                return
            rev = min(self.history[key])
            entry = files.restore(self.w.svc, USERS[who], RestoreRequest(path=path, rev=rev))
            self.w.revs[key] = entry.rev  # type: ignore[union-attr]
            self.live[key] = self.history[key][rev]
            self.history[key][entry.rev] = self.live[key]  # type: ignore[union-attr]

        @rule(who=st.integers(0, 1), blocks=st.lists(st.integers(0, 5), min_size=1, max_size=2))
        def abandon_upload(self, who: int, blocks: list[int]) -> None:
            ids = [block_id(POOL[i]) for i in blocks]
            spec = [{"id": i, "size": BLOCK} for i in ids]
            started = uploads.start_upload(
                self.w.svc,
                USERS[who],
                UploadStartRequest.model_validate(
                    {
                        "files": [
                            {
                                "path": "/abandoned",
                                "size": BLOCK * len(ids),
                                "content_hash": content_hash(ids),
                                "blocks": spec,
                            }
                        ]
                    }
                ),
            )
            for n, need in enumerate(started.needed):
                key = object_keys.staging_key(started.upload_id, need.id, n)
                self.w.store.put(key, b"partial")

        @rule()
        def dedup(self) -> None:
            self.w.run("dedup", days=self.days)

        @rule(advance=st.sampled_from([0.0, 0.5, 2.0, 31.0, 40.0]))
        def gc(self, advance: float) -> None:
            self.days += advance
            self.w.run("gc", days=self.days)
            if self.days >= RETENTION_DAYS:  # everything was deleted/superseded "long ago"
                for key in self.trashed:
                    del self.history[key]
                self.trashed.clear()
                for key, revs in self.history.items():
                    latest = max(revs)
                    self.history[key] = {latest: revs[latest]}

        @invariant()
        def nothing_is_lost(self) -> None:
            assert_nothing_dangles(self.w)
            for (uid, path), data in self.live.items():
                who = next(u for u in USERS if u.user_id == uid)
                assert self.w.get(who, path) == data
            for (uid, path), revs in self.history.items():
                if (uid, path) not in self.live:
                    continue
                who = next(u for u in USERS if u.user_id == uid)
                for rev, data in revs.items():
                    assert self.w.get(who, path, rev=rev) == data

    run_state_machine_as_test(
        GcMachine,
        settings=settings(
            max_examples=6,
            stateful_step_count=16,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
