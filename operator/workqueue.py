"""A keyed, coalescing, delayed work queue (client-go's workqueue, in miniature).

Why not reconcile inside each kopf handler: a 64-pod gang produces hundreds of pod events in a few
seconds, each of which would run a full pass for the same job, concurrently, on kopf's thread pool.
Here an event only marks its job dirty. A key is processed by one worker at a time; events that
arrive meanwhile collapse into one more pass afterwards. A pass may ask to be looked at again
after a delay (a startup deadline, a TTL), which replaces kopf timers: no per-object timer task,
and no finalizer (kopf adds one for every timer), so deleting a job never waits for the operator.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        work: Callable[[K], float | None],
        *,
        workers: int = 4,
        error_delay: Callable[[int], float] = lambda n: min(0.5 * 2**n, 30.0),
    ) -> None:
        self._work = work
        self._workers = workers
        self._error_delay = error_delay
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}  # key -> earliest time it is due (one live heap entry per key)
        self._busy: set[K] = set()
        self._dirty: set[K] = set()  # added while busy: run again right after
        self._errors: dict[K, int] = {}
        self._seq = 0
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def add(self, key: K, delay: float = 0.0) -> None:
        due = time.monotonic() + max(delay, 0.0)
        with self._cond:
            if key in self._busy and delay <= 0:
                self._dirty.add(key)
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, key))
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due) + len(self._dirty)

    def depth(self) -> int:
        """Keys due now that no worker has started yet (not those waiting out a delay)."""
        now = time.monotonic()
        with self._cond:
            return sum(1 for due in self._due.values() if due <= now) + len(self._dirty)

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"forgeline-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _next(self) -> K | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier add
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    if key in self._busy:  # due, but another worker has it: it runs again after
                        self._dirty.add(key)
                        continue
                    self._busy.add(key)
                    return key
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            again: float | None
            try:
                again = self._work(key)
                self._errors.pop(key, None)
            except Exception:
                failures = self._errors.get(key, 0)
                self._errors[key] = failures + 1
                again = self._error_delay(failures)
                log.exception("reconcile of %s failed; retrying in %.1fs", key, again)
            with self._cond:
                self._busy.discard(key)
                rerun = key in self._dirty
                self._dirty.discard(key)
            if rerun:
                self.add(key)
            if again is not None:
                self.add(key, again)
