"""The Ray scheduler's rules without Ray: idle workers take images, a lost worker's image runs once elsewhere."""
from __future__ import annotations

from pathlib import Path

import pytest

from trellis2_core.batch.inputs import BatchInput
from trellis2_core.batch.manifest import Entry
from trellis2_core.batch.ray_pool import Scheduler, WorkerLost
from trellis2_core.errors import BackendError


def _items(n):
    return [BatchInput(f"i{k}.png", Path(f"i{k}.png"), f"i{k}.glb", 42) for k in range(n)]


class _Fake:
    """Runs tasks at once; ``die`` = {worker: number of its tasks after which it is lost (0 = the first)}."""

    def __init__(self, die=None):
        self.die, self.count, self.log, self.results = dict(die or {}), {}, [], {}

    def submit(self, worker, item, attempt):
        handle = (worker, item.key, attempt)
        self.log.append(handle)
        n = self.count.get(worker, 0)
        self.count[worker] = n + 1
        lost = worker in self.die and n >= self.die[worker]
        entry = Entry(item.key, item.output, 42, status="ok", worker=worker, attempts=attempt)
        self.results[handle] = WorkerLost("ActorDiedError: killed") if lost else entry
        return handle

    def wait_one(self, handles):
        return handles[0], self.results[handles[0]]


def _run(workers, items, fake):
    got = {}
    Scheduler(workers, fake.submit, fake.wait_one, lambda item, out: got.__setitem__(item.key, out)).run(items)
    return got


def test_every_image_once_spread_over_workers():
    fake = _Fake()
    got = _run(["w0", "w1"], _items(5), fake)
    assert sorted(got) == [f"i{k}.png" for k in range(5)] and all(e.status == "ok" for e in got.values())
    assert {w for w, _, _ in fake.log} == {"w0", "w1"} and len(fake.log) == 5


def test_a_lost_workers_image_is_retried_once_on_another_worker():
    fake = _Fake(die={"w0": 0})
    got = _run(["w0", "w1"], _items(3), fake)
    assert all(e.status == "ok" and e.worker == "w1" for e in got.values())
    retried = [h for h in fake.log if h[2] == 2]
    assert len(retried) == 1 and retried[0][0] == "w1"
    assert all(w == "w1" for w, _, _ in fake.log[1:])  # the dead worker gets nothing more


def test_lost_twice_is_a_failure_and_the_batch_goes_on():
    fake = _Fake(die={"w0": 0, "w1": 1})  # w0 dies on its first image, w1 on its second (i0's retry)
    got = _run(["w0", "w1", "w2"], _items(4), fake)
    assert isinstance(got["i0.png"], str) and "worker lost" in got["i0.png"] and "2 attempts" in got["i0.png"]
    assert all(isinstance(got[f"i{k}.png"], Entry) and got[f"i{k}.png"].status == "ok" for k in (1, 2, 3))
    assert [h for h in fake.log if h[1] == "i0.png"] == [("w0", "i0.png", 1), ("w1", "i0.png", 2)]


def test_all_workers_lost_stops_with_a_clear_error():
    fake = _Fake(die={"w0": 0, "w1": 0})
    with pytest.raises(BackendError, match="every Ray worker died"):
        _run(["w0", "w1"], _items(2), fake)


def test_a_single_worker_cannot_retry_elsewhere():
    fake = _Fake(die={"w0": 0})
    with pytest.raises(BackendError, match="every Ray worker died"):
        _run(["w0"], _items(2), fake)


def test_record_can_stop_the_batch():
    fake = _Fake()

    def record(item, out):
        raise RuntimeError("stop")

    sched = Scheduler(["w0", "w1"], fake.submit, fake.wait_one, record)
    with pytest.raises(RuntimeError, match="stop"):
        sched.run(_items(4))
    assert len(sched.running) == 1  # the other worker's task still runs: the caller cancels it
