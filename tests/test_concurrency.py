"""Several requests at once: sessions never disturb each other, the network is shared per step."""

from __future__ import annotations

import threading

import numpy as np

from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
from medsam2_engine.image_segmenter import ImageSegmenter
from medsam2_engine.predictor import FairLock, network_lock
from medsam2_engine.prompts import Box, Click, LabelPrompts
from medsam2_engine.sessions import SessionLimits
from medsam2_engine.study_memory import StudyMemory
from tests.conftest import make_volume


def _requests():
    """Two users, two studies, each a box then a correction click (and a second label for one)."""
    a, b = make_volume((32, 24, 14), seed=11), make_volume((28, 30, 12), seed=12)
    a_steps = [{"organ": LabelPrompts(boxes=[Box(6, 5, 24, 18, 7)])},
               {"organ": LabelPrompts(boxes=[Box(6, 5, 24, 18, 7)], clicks=[Click(14, 11, 9, True)])},
               {"vessel": LabelPrompts(clicks=[Click(20, 8, 3, True)])}]
    b_steps = [{"lesion": LabelPrompts(clicks=[Click(12, 15, 6, True)])},
               {"lesion": LabelPrompts(clicks=[Click(12, 15, 6, True), Click(5, 5, 6, False)])}]
    return [(("user-a", "study-a"), a, a_steps), (("user-b", "study-b"), b, b_steps)]


def _run(segmenter, key, volume, steps) -> list:
    masks = []
    for prompts in steps:
        result = segmenter.run(volume, prompts, key)
        masks.append({label: r.mask.copy() for label, r in result.labels.items()})
    return masks


def _in_threads(jobs) -> list:
    """Run each job in its own thread, started together; returns results, re-raising any error."""
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def work(n, job):
        try:
            start.wait()
            results[n] = job()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n, job)) for n, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_two_sessions_at_once_give_exactly_what_each_gets_alone(small_source):
    for protocol in ("medsam2", "sam2"):
        requests = _requests()
        alone = [_run(VolumeSegmenter(small_source, EngineSettings(protocol=protocol)), *r) for r in requests]
        shared = VolumeSegmenter(small_source, EngineSettings(protocol=protocol))
        together = _in_threads([lambda r=r: _run(shared, *r) for r in requests])
        for one, both in zip(alone, together):
            assert [sorted(step) for step in one] == [sorted(step) for step in both]
            for step_alone, step_together in zip(one, both):
                for label in step_alone:
                    np.testing.assert_array_equal(step_alone[label], step_together[label])
        assert any(m.any() for steps in together for step in steps for m in step.values())


def test_requests_of_one_session_run_one_after_the_other(small_source):
    volume = make_volume((24, 20, 8), seed=13)
    segmenter = VolumeSegmenter(small_source)
    inside, most = [0], [0]
    original = segmenter._segment_label

    def counting(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            return original(*args, **kwargs)
        finally:
            inside[0] -= 1

    segmenter._segment_label = counting
    prompts = [{"organ": LabelPrompts(clicks=[Click(10, 9, 4, True)])},
               {"organ": LabelPrompts(clicks=[Click(10, 9, 4, True), Click(12, 10, 5, True)])}]
    _in_threads([lambda p=p: segmenter.run(volume, p, ("same",)) for p in prompts])
    assert most[0] == 1
    # another session is not held up by it
    _in_threads([lambda n=n: segmenter.run(volume, prompts[0], (f"other{n}",)) for n in range(2)])
    assert most[0] == 2


def test_the_network_is_held_per_slice_step_so_two_propagations_interleave(small_source):
    model = small_source.get().model
    steps, active, overlap = [], [0], [False]
    original = type(model)._run_single_frame_inference

    def recording(self, *args, **kwargs):
        active[0] += 1
        overlap[0] |= active[0] > 1
        steps.append(threading.current_thread().name)
        try:
            return original(self, *args, **kwargs)
        finally:
            active[0] -= 1

    type(model)._run_single_frame_inference = recording
    try:
        segmenter = VolumeSegmenter(small_source)
        volumes = [make_volume((24, 20, 24), seed=s) for s in (21, 22)]
        prompts = {"organ": LabelPrompts(clicks=[Click(10, 9, 12, True)])}

        def job(n):
            threading.current_thread().name = f"user{n}"
            return segmenter.run(volumes[n], prompts, (f"user{n}",))

        _in_threads([lambda n=n: job(n) for n in range(2)])
    finally:
        type(model)._run_single_frame_inference = original
    assert not overlap[0]  # one network step at a time
    first_done = {name: max(i for i, s in enumerate(steps) if s == name) for name in ("user0", "user1")}
    first_seen = {name: steps.index(name) for name in ("user0", "user1")}
    # each user's steps start before the other's propagation is over: they interleave
    assert first_seen["user1"] < first_done["user0"] and first_seen["user0"] < first_done["user1"]


def test_fair_lock_serves_in_arrival_order_and_is_reentrant():
    lock, order = FairLock(), []
    lock.acquire()
    with lock:  # re-entrant
        pass
    arrived = []

    def waiter(n):
        arrived.append(n)
        with lock:
            order.append(n)

    threads = []
    for n in range(3):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        while lock._next_ticket < n + 2:  # wait until this thread holds its ticket
            pass
        threads.append(t)
    lock.release()
    for t in threads:
        t.join(timeout=10)
    assert order == [0, 1, 2]


def test_one_memory_budget_covers_3d_and_2d_sessions(small_source):
    store = StudyMemory(SessionLimits(max_sessions=8, max_memory_mb=0.5))
    volumes = VolumeSegmenter(small_source, memory=store)
    images = ImageSegmenter(small_source, memory=store)
    big = make_volume((64, 64, 40), seed=14)  # 640 KiB of float32: over the budget alone
    volumes.run(big, {"organ": LabelPrompts(clicks=[Click(30, 30, 20, True)])}, ("3d-user",))
    assert store.keys() == [("3d-user",)]  # the newest session is always kept
    images.run(make_volume((24, 20, 4), seed=15), LabelPrompts(clicks=[Click(10, 9, 2, True)]),
               ("2d-user",), slice_index=2)
    assert store.keys() == [("2d", "2d-user")]  # the 3D session was evicted for the 2D one: one budget
    assert network_lock(small_source.get().model) is network_lock(small_source.get().model)
