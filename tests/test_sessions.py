"""Session bounds: count, memory, idle time; least recently used goes first."""

from __future__ import annotations

from dataclasses import dataclass

from medsam2_engine.sessions import SessionLimits
from medsam2_engine.study_memory import StudyMemory


@dataclass
class FakeSession:
    key: tuple
    size: int
    last_used: float = 0.0
    feature_cache: None = None

    def private_bytes(self) -> int:
        return self.size

    def shared_bytes(self) -> dict:
        return {}

    def memory_bytes(self) -> int:
        return self.size


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_memory_limit_evicts_least_recently_used_but_never_the_current_one():
    store = StudyMemory(SessionLimits(max_sessions=10, max_memory_mb=3.0))
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
    store = StudyMemory(SessionLimits(idle_timeout_s=60.0), clock=clock)
    store.put(FakeSession(("old",), 1))
    clock.now = 30.0
    store.put(FakeSession(("new",), 1))
    clock.now = 75.0
    assert store.get(("old",)) is None
    assert store.get(("new",)) is not None


@dataclass
class SharingSession:
    """A session whose feature cache and volume other sessions may hold too."""

    key: tuple
    cache: object
    array: object
    own: int = 0
    last_used: float = 0.0

    def private_bytes(self) -> int:
        return self.own

    def shared_bytes(self) -> dict:
        return {id(self.array): self.array.nbytes, id(self.cache.shared): self.cache.bytes}

    def memory_bytes(self) -> int:
        return self.own + sum(self.shared_bytes().values())

    @property
    def feature_cache(self):
        return self.cache


def _features(store, image: str, slices: int, version: int = 1):
    import torch

    from medsam2_engine.feature_cache import FeatureKey, FeatureCacheView

    key = FeatureKey((image,), (0.0, 1.0), version, 64, "float")
    cache = FeatureCacheView(store.feature_cache(key, 1 << 30), key)  # as a session sees it
    for k in range(slices):  # 64 KiB of features per slice
        cache.put(k, {"backbone_fpn": [torch.zeros(1, 16, 32, 32)], "vision_pos_enc": [torch.zeros(1, 16, 32, 32)]})
    return cache


def test_the_budget_counts_a_shared_feature_cache_and_volume_once():
    import numpy as np

    store = StudyMemory(SessionLimits(max_sessions=10, max_memory_mb=100.0))
    cache, array = _features(store, "ct1", 8), np.zeros(1024, np.float32)
    store.put(SharingSession(("alice", "ct1"), cache, array, own=100))
    store.put(SharingSession(("bob", "ct1"), cache, array, own=10))
    assert cache.bytes == 8 * 64 * 1024
    assert store.memory_bytes() == 110 + array.nbytes + cache.bytes


def test_caches_no_session_holds_go_first_then_sessions_and_idle_ones_expire():
    import numpy as np

    clock = Clock()
    store = StudyMemory(SessionLimits(max_sessions=10, max_memory_mb=1.3, idle_timeout_s=60.0), clock=clock)
    unheld = _features(store, "ct1", 8)  # 0.5 MiB encoded ahead, no session on it yet
    clock.now = 10.0
    held = _features(store, "ct2", 8)
    store.put(SharingSession(("alice", "ct2"), held, np.zeros(16, np.uint8)))
    assert store.features.caches() == [unheld.shared, held.shared]  # within the budget: both kept
    clock.now = 20.0
    store.put(SharingSession(("bob", "ct3"), _features(store, "ct3", 8), np.zeros(16, np.uint8)))
    assert unheld.shared not in store.features.caches(), "the cache no session holds goes first"
    assert store.keys() == [("alice", "ct2"), ("bob", "ct3")]
    clock.now = 50.0
    store.put(store.get(("alice", "ct2")))  # alice's last request: her image's slices idle from here
    store.drop(("alice", "ct2"))  # its cache stays for another user, until idle too long
    clock.now = 75.0
    store.get(("bob", "ct3"))
    assert held.shared in store.features.caches()
    clock.now = 115.0
    store.get(("bob", "ct3"))
    assert held.shared not in store.features.caches() and len(store.features) == 1


def test_new_weights_drop_the_old_versions_caches():
    store = StudyMemory()
    old = _features(store, "ct1", 2, version=1)
    new = _features(store, "ct1", 2, version=2)
    assert new.shared is not old.shared and store.features.caches() == [new.shared]


def test_a_fine_tune_starting_makes_sessions_give_it_room():
    """With a limit on the process family, sessions get what the rest leaves: when the trainer's
    memory appears, the least recently used sessions go; the one in use stays."""
    mb = 1024 * 1024
    process = {"others": 1000 * mb}  # the network, runtimes, Python: everything but the sessions
    store = StudyMemory(SessionLimits(max_sessions=50, max_memory_mb=4096.0, process_limit_mb=1500.0),
                         process_bytes=lambda: process["others"] + store.memory_bytes())
    for name in "abcd":
        store.put(FakeSession((name,), 100 * mb))
    assert len(store) == 4 and store.session_budget_bytes() == 500 * mb
    process["others"] += 250 * mb  # a fine-tune starts as a child process
    store.put(FakeSession(("e",), 100 * mb))
    assert store.keys() == [("d",), ("e",)]  # 250 MB left for sessions: the oldest three went
    assert process["others"] + store.memory_bytes() <= 1500 * mb
    report = store.memory_report()
    assert report["sessions_mb"] == 200 and report["session_budget_mb"] == 250 and report["process_limit_mb"] == 1500
    assert report["holds_mb"]["sessions_own"] == 200 and report["sessions_by_kind"] == {"FakeSession": 2}


def test_without_a_process_limit_only_the_session_budget_counts():
    mb = 1024 * 1024
    store = StudyMemory(SessionLimits(max_memory_mb=300.0), process_bytes=lambda: 10**12)
    for name in "abc":
        store.put(FakeSession((name,), 100 * mb))
    assert len(store) == 3 and store.session_budget_bytes() == 300 * mb


def test_a_new_session_waits_for_room_and_one_always_proceeds():
    """Within a process limit, a session being begun waits while the others being begun and it
    would not fit; it goes once one of them is answered. Alone it always proceeds."""
    import threading
    import time

    import pytest

    from medsam2_engine.sessions import MemoryBusy

    mb = 1024 * 1024
    store = StudyMemory(SessionLimits(max_sessions=50, process_limit_mb=1000.0),
                         process_bytes=lambda: 600 * mb + store.memory_bytes())  # 400 MB left for sessions
    order = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first():
        with store.reserve(300 * mb):
            order.append("first in")
            first_in.set()
            release_first.wait(10)
        order.append("first out")

    def second():
        first_in.wait(10)
        with store.reserve(300 * mb):  # 300 + 300 > 400: waits for the first
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert order == ["first in"] and store.memory_report()["being_opened"] == 1
    release_first.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"] and store.waited == 1
    with store.reserve(5000 * mb):  # alone: larger than the budget, still proceeds
        with pytest.raises(MemoryBusy, match="memory limit"):
            with store.reserve(300 * mb, timeout_s=0.2):
                pass


def test_at_most_max_opening_sessions_are_begun_at_once():
    import threading
    import time

    store = StudyMemory(SessionLimits(max_opening=2))
    inside, most, lock = [0], [0], threading.Lock()

    def open_one():
        with store.reserve(1):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 2 and store.waited >= 1
