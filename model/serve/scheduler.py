"""Who asked for what, and in which order the daemon's one worker computes it.

A Client is one party with requests in flight — a socket connection (daemon.py) or an HTTP
connection (openai_http.py) — and a Job one generate request of it. The FairScheduler hands
the jobs out one at a time: clients in turn (the one served least recently, a new one first)
and, of one client's queue, its newest request first (the older ones are likely superseded).
A client has at most MAX_QUEUED jobs waiting.
"""
from __future__ import annotations

import collections
import itertools
import threading

from model.params import SamplingParams
from model.protocol import CancelToken

MAX_QUEUED = 8


class Refused(ValueError):
    """A request the daemon will not take; str(error) is the one sentence sent back."""


class Client:
    """One party with requests in flight; subclasses say how a reply reaches it."""

    _keys = itertools.count(1)

    def __init__(self) -> None:
        self.key = next(self._keys)
        self.jobs: dict[int, Job] = {}
        self.closed = False

    def send(self, message: dict) -> None:
        """Deliver one reply frame; never raises (a client that cannot take it is dropped)."""
        raise NotImplementedError

    def drop(self) -> None:
        """The client is gone or must go: nothing more is sent, and its jobs stop."""
        self.closed = True
        for job in list(self.jobs.values()):
            job.cancel.cancel()


class Job:
    """One generate request: who asked, what to generate, and its cancel token."""

    __slots__ = ("client", "id", "prompt", "params", "cancel")

    def __init__(self, client: Client, request_id: int, prompt: str | list[int], params: SamplingParams) -> None:
        self.client, self.id, self.prompt, self.params = client, request_id, prompt, params
        self.cancel = CancelToken()


class FairScheduler:
    """Queued generations of many clients, handed out one at a time, clients in turn."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self._queues: collections.OrderedDict[int, collections.deque[Job]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> bool:
        """Queue a job; False (and nothing queued) when its client already has max_queued waiting."""
        with self._cond:
            queue = self._queues.get(job.client.key)
            if queue is None:   # a new client has waited longest: it goes first
                queue = self._queues[job.client.key] = collections.deque()
                self._queues.move_to_end(job.client.key, last=False)
            if len(queue) >= self.max_queued:
                return False
            queue.append(job)
            self._cond.notify()
            return True

    def remove(self, job: Job) -> bool:
        """Take a job that is still waiting out of its queue; False when it has left already."""
        with self._cond:
            queue = self._queues.get(job.client.key)
            if queue is None or job not in queue:
                return False
            queue.remove(job)
            return True

    def forget(self, client: Client) -> None:
        """Drop a client that went away, with whatever it still had queued."""
        with self._cond:
            self._queues.pop(client.key, None)

    @property
    def pending(self) -> bool:
        with self._cond:
            return any(self._queues.values())

    def take(self) -> Job | None:
        """The next job — of the client served least recently — waits for one, and returns
        None once the scheduler is closed."""
        with self._cond:
            while not self._closed:
                for client, queue in self._queues.items():
                    if queue:
                        self._queues.move_to_end(client)   # then the other clients' turn
                        return queue.pop()
                self._cond.wait(timeout=0.5)
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
