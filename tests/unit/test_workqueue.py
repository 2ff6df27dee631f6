"""The work queue: one worker per key at a time, bursts folded into one pass, delayed requeues."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from forgeline.operator.workqueue import WorkQueue


def wait_until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def first_pass_held(record: Callable[[str], object]) -> tuple[Callable[[str], None], threading.Event, threading.Event]:
    """A work function that records each pass and holds the first until `release` is set."""
    started, release = threading.Event(), threading.Event()

    def work(key: str) -> None:
        record(key)
        if not started.is_set():
            started.set()
            release.wait(5)

    return work, started, release


def test_a_burst_of_adds_while_busy_becomes_one_more_pass() -> None:
    calls: list[str] = []
    work, started, release = first_pass_held(calls.append)
    queue: WorkQueue[str] = WorkQueue(work, workers=3)
    queue.start()
    try:
        queue.add("job")
        assert started.wait(5)
        for _ in range(50):
            queue.add("job")
        release.set()
        wait_until(lambda: len(calls) == 2 and len(queue) == 0)
        assert calls == ["job", "job"]
    finally:
        queue.stop()


def test_a_delayed_add_while_busy_waits_out_its_delay_after_the_pass() -> None:
    """Pod events batch (controller.CHILD_BATCH): one arriving mid-pass must not turn into a pass
    right after it, or a gang's start is one pass after another for as long as pods change."""
    calls: list[float] = []
    work, started, release = first_pass_held(lambda _: calls.append(time.monotonic()))
    queue: WorkQueue[str] = WorkQueue(work, workers=3)
    queue.start()
    try:
        queue.add("job")
        assert started.wait(5)
        queue.add("job", 0.3)
        added = time.monotonic()
        time.sleep(0.05)  # idle workers look at the heap meanwhile
        release.set()
        wait_until(lambda: len(calls) == 2)
        assert calls[1] - added >= 0.3
    finally:
        queue.stop()


def test_one_key_is_never_processed_by_two_workers_at_once() -> None:
    active: dict[str, int] = {}
    overlap: list[str] = []
    lock = threading.Lock()

    def work(key: str) -> None:
        with lock:
            active[key] = active.get(key, 0) + 1
            if active[key] > 1:
                overlap.append(key)
        sum(range(20_000))  # a little work, so passes of one key would overlap if they could
        with lock:
            active[key] -= 1

    queue: WorkQueue[str] = WorkQueue(work, workers=4)
    queue.start()
    try:
        for i in range(200):
            queue.add(f"k{i % 2}")
            if i % 5 == 0:
                wait_until(lambda: len(queue) < 2)
        wait_until(lambda: len(queue) == 0)
        assert not overlap
    finally:
        queue.stop()


def test_requeue_after_and_retry_after_errors() -> None:
    calls: list[float] = []

    def work(key: str) -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("api down")
        return 0.05 if len(calls) == 2 else None

    queue: WorkQueue[str] = WorkQueue(work, workers=1, error_delay=lambda n: 0.05)
    queue.start()
    try:
        queue.add("job")
        wait_until(lambda: len(calls) == 3)
        assert calls[1] - calls[0] >= 0.04 and calls[2] - calls[1] >= 0.04
    finally:
        queue.stop()
