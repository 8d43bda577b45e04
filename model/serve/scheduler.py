"""Who asked for what, and in which order the daemon's one worker computes it.

A Client is one party with requests in flight — a socket connection (daemon.py) or an HTTP
request (openai_http.py) — and a Job one generate request of it. Clients belong to a party,
the unit of fairness: each socket connection is its own party (each editor window counts
once), while every HTTP request of the face is one party, whichever connection it came on
(they all carry the face's one key), so twenty HTTP connections weigh what one editor does.

The FairScheduler hands the jobs out one at a time: parties in turn (the one served least
recently, a new one first), within a party its clients in turn, and of one client's queue
its newest request first (the older ones are likely superseded). A job is handed out for a
turn, not to its end: one the worker has started goes back to its client's queue after a
turn (`resume`) while others wait (see daemon.py). A client has at most MAX_QUEUED jobs
waiting.
"""
from __future__ import annotations

import collections
import itertools
import threading
from typing import Hashable

from model.params import SamplingParams
from model.protocol import CancelToken, Generation

MAX_QUEUED = 8


class Refused(ValueError):
    """A request the daemon will not take; str(error) is the one sentence sent back."""


class Client:
    """One party with requests in flight; subclasses say how a reply reaches it."""

    _keys = itertools.count(1)

    def __init__(self, party: Hashable | None = None) -> None:
        self.key = next(self._keys)
        self.party = self.key if party is None else party   # whom fairness counts it as
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
    """One generate request: who asked, what to generate, its cancel token, and its
    generation once the worker has started it."""

    __slots__ = ("client", "id", "prompt", "params", "cancel", "generation")

    def __init__(self, client: Client, request_id: int, prompt: str | list[int], params: SamplingParams) -> None:
        self.client, self.id, self.prompt, self.params = client, request_id, prompt, params
        self.cancel = CancelToken()
        self.generation: Generation | None = None


class FairScheduler:
    """Queued generations of many clients, handed out one turn at a time, parties in turn."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        # party -> client key -> that client's queue, each level in the order it is served
        self._parties: collections.OrderedDict[Hashable, collections.OrderedDict[int, collections.deque[Job]]] = \
            collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job) -> bool:
        """Queue a job; False (and nothing queued) when its client already has max_queued waiting."""
        with self._cond:
            queue = self._queue(job.client)
            if len(queue) >= self.max_queued:
                return False
            queue.append(job)
            self._cond.notify()
            return True

    def resume(self, job: Job) -> bool:
        """Queue again a started job after its turn (no limit: it left this queue); False when
        its client has gone meanwhile (the caller then ends the job)."""
        with self._cond:
            if job.client.closed:
                return False
            self._queue(job.client).append(job)
            self._cond.notify()
            return True

    def remove(self, job: Job) -> bool:
        """Take a job that is still waiting out of its queue; False when it has left already."""
        with self._cond:
            queue = self._parties.get(job.client.party, {}).get(job.client.key)
            if queue is None or job not in queue:
                return False
            queue.remove(job)
            return True

    def forget(self, client: Client) -> list[Job]:
        """Drop a client that went away; returns what it still had queued."""
        with self._cond:
            party = self._parties.get(client.party)
            queue = party.pop(client.key, None) if party is not None else None
            if party is not None and not party:
                del self._parties[client.party]
            return list(queue or ())

    @property
    def pending(self) -> bool:
        with self._cond:
            return any(queue for party in self._parties.values() for queue in party.values())

    def take(self) -> Job | None:
        """The next job — of the party, then the client, served least recently — waits for
        one, and returns None once the scheduler is closed."""
        with self._cond:
            while not self._closed:
                for name, party in self._parties.items():
                    for key, queue in party.items():
                        if queue:
                            party.move_to_end(key)          # then its other clients' turn
                            self._parties.move_to_end(name)   # then the other parties' turn
                            return queue.pop()
                self._cond.wait(timeout=0.5)
        return None

    def close(self) -> None:
        """Hand out nothing more: take() returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Job]:
        """Empty every queue; returns the jobs that were in them."""
        with self._cond:
            left = [job for party in self._parties.values() for queue in party.values() for job in queue]
            self._parties.clear()
            return left

    def _queue(self, client: Client) -> collections.deque[Job]:
        """The client's queue; a new party, and a new client of its party, has waited longest
        and goes first."""
        party = self._parties.get(client.party)
        if party is None:
            party = self._parties[client.party] = collections.OrderedDict()
            self._parties.move_to_end(client.party, last=False)
        queue = party.get(client.key)
        if queue is None:
            queue = party[client.key] = collections.deque()
            party.move_to_end(client.key, last=False)
        return queue
