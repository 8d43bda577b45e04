"""The completion worker: one thread, one job at a time, the newest job per key wins.

    worker = Worker()
    job = worker.submit((uri, "inline"), lambda cancel: service.complete(snap, pos, cancel))
    result = await asyncio.wrap_future(job.future)     # None when a newer job superseded it

Keys are (document, kind) pairs. Submitting a job for a key cancels the previous job for that
key: a queued one is answered with None without running; a running one has its CancelToken
set, which the engine checks before prefill and between decode steps. A job may wait `delay`
seconds before it runs (the debounce while typing): jobs behind it that are ready run first, and
a newer job for its key replaces it unrun. Jobs without a key
(reading the figures, clearing the cache) run in order and supersede nothing. `forget(document)`
cancels every job of a document that closed. The event loop never waits on the worker's lock
for longer than a queue operation.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Hashable

from model.protocol import CancelToken

log = logging.getLogger(__name__)

Key = tuple[Hashable, str]   # (document, kind)


class Job:
    __slots__ = ("key", "fn", "cancel", "future", "not_before")

    def __init__(self, key: Key | None, fn: Callable[[CancelToken], Any], delay: float = 0.0) -> None:
        self.key = key
        self.fn = fn
        self.cancel = CancelToken()
        self.future: Future = Future()
        self.not_before = time.monotonic() + delay

    def wait(self, now: float) -> float:
        """Seconds until the job may run (0: now; a cancelled job is answered at once)."""
        return 0.0 if self.cancel.cancelled else max(0.0, self.not_before - now)


class Worker:
    def __init__(self, name: str = "latent-completion") -> None:
        self._name = name
        self._queue: deque[Job] = deque()
        self._latest: dict[Key, Job] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def submit(self, key: Key | None, fn: Callable[[CancelToken], Any],
               delay: float = 0.0) -> Job:
        """Queue `fn(cancel)` to run in `delay` seconds at the earliest; with a key, cancel the
        key's previous job."""
        job = Job(key, fn, delay)
        with self._wake:
            if self._stopped:
                job.future.set_result(None)
                return job
            if key is not None:
                previous = self._latest.get(key)
                if previous is not None:
                    previous.cancel.cancel()
                self._latest[key] = job
            self._queue.append(job)
            self._start()
            self._wake.notify()
        return job

    def forget(self, document: Hashable) -> None:
        """Cancel the jobs of a document that closed (keys (document, kind)) and drop them."""
        with self._wake:
            jobs = [self._latest.pop(key) for key in list(self._latest) if key[0] == document]
        for job in jobs:
            job.cancel.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything, answer queued jobs with None, and end the thread."""
        with self._wake:
            self._stopped = True
            queued, self._queue = list(self._queue), deque()
            self._latest.clear()
            self._wake.notify()
            thread = self._thread
        for job in queued:
            job.cancel.cancel()
            _resolve(job, None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                job = self._next()
                if job is None:
                    return
            self._run(job)

    def _next(self) -> Job | None:
        """The first queued job that may run now, waiting for one (None: stopped). Holds the lock."""
        while not self._stopped:
            now = time.monotonic()
            waits = [job.wait(now) for job in self._queue]
            for job, wait in zip(self._queue, waits, strict=True):
                if wait == 0.0:
                    self._queue.remove(job)
                    return job
            self._wake.wait(min(waits) if waits else None)
        return None

    def _run(self, job: Job) -> None:
        try:
            if job.cancel.cancelled or not job.future.set_running_or_notify_cancel():
                _resolve(job, None)
                return
            try:
                result = job.fn(job.cancel)
            except BaseException as e:  # the caller decides what an error means
                job.future.set_exception(e)
            else:
                job.future.set_result(result)
        finally:
            with self._wake:
                if job.key is not None and self._latest.get(job.key) is job:
                    del self._latest[job.key]


def _resolve(job: Job, value: Any) -> None:
    if not job.future.done():
        try:
            job.future.set_result(value)
        except Exception:  # cancelled by its awaiter in the meantime
            pass
