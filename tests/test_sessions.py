"""Session bounds: count, memory, idle time; least recently used goes first."""

from __future__ import annotations

from dataclasses import dataclass

from medsam2_engine.sessions import SessionLimits, SessionStore


@dataclass
class FakeSession:
    key: tuple
    size: int
    last_used: float = 0.0

    def memory_bytes(self) -> int:
        return self.size


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_memory_limit_evicts_least_recently_used_but_never_the_current_one():
    store = SessionStore(SessionLimits(max_sessions=10, max_memory_mb=3.0))
    mb = 1024 * 1024
    for name in "abc":
        store.put(FakeSession((name,), mb))
    store.get(("a",))  # a is now more recent than b
    store.put(FakeSession(("d",), mb))
    assert store.keys() == [("c",), ("a",), ("d",)]
    store.put(FakeSession(("huge",), 5 * mb))  # alone over the limit: kept, all others go
    assert store.keys() == [("huge",)]
    assert store.evictions == 4


def test_idle_sessions_expire():
    clock = Clock()
    store = SessionStore(SessionLimits(idle_timeout_s=60.0), clock=clock)
    store.put(FakeSession(("old",), 1))
    clock.now = 30.0
    store.put(FakeSession(("new",), 1))
    clock.now = 75.0
    assert store.get(("old",)) is None
    assert store.get(("new",)) is not None
