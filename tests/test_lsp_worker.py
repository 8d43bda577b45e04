"""The completion worker: one job at a time, the newest job per (document, kind) wins. No model."""
from __future__ import annotations

import threading
import time

from lsp_server.worker import Worker


def _blocking_job(started: threading.Event, release: threading.Event, log: list, name: str):
    def job(cancel):
        started.set()
        release.wait(5)
        log.append((name, cancel.cancelled))
        return name
    return job


def test_newer_job_for_a_key_cancels_the_running_one_and_skips_queued_ones():
    worker, log = Worker(), []
    started, release = threading.Event(), threading.Event()
    first = worker.submit(("a", "inline"), _blocking_job(started, release, log, "first"))
    assert started.wait(5)
    queued = worker.submit(("a", "inline"), lambda cancel: log.append(("queued", cancel.cancelled)) or "queued")
    newest = worker.submit(("a", "inline"), lambda cancel: log.append(("newest", cancel.cancelled)) or "newest")
    assert first.cancel.cancelled                    # the running job is told to stop …
    release.set()
    assert first.future.result(5) == "first"        # … and still answers once, with what it has
    assert queued.future.result(5) is None           # the queued one never runs
    assert newest.future.result(5) == "newest"
    assert log == [("first", True), ("newest", False)]
    worker.stop()


def test_jobs_of_other_documents_and_keyless_jobs_run_in_order():
    worker, order = Worker(), []
    futures = [worker.submit(key, lambda cancel, k=key, i=i: order.append((k, i))).future
               for i, key in enumerate([("a", "inline"), ("b", "inline"), None, ("c", "inline"), None])]
    for future in futures:
        future.result(5)
    assert order == [(("a", "inline"), 0), (("b", "inline"), 1), (None, 2), (("c", "inline"), 3), (None, 4)]
    worker.stop()


def test_errors_reach_the_awaiting_side_and_the_worker_goes_on():
    worker = Worker()
    failing = worker.submit(("a", "inline"), lambda cancel: 1 / 0)
    fine = worker.submit(("b", "inline"), lambda cancel: "ok")
    try:
        failing.future.result(5)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    assert fine.future.result(5) == "ok"
    worker.stop()


def test_forget_cancels_a_closed_documents_jobs_and_stop_answers_the_queue():
    worker, log = Worker(), []
    started, release = threading.Event(), threading.Event()
    running = worker.submit(("a", "inline"), _blocking_job(started, release, log, "running"))
    assert started.wait(5)
    precompute = worker.submit(("a", "precompute"), lambda cancel: "never")
    queued = worker.submit(("b", "inline"), lambda cancel: "never")
    worker.forget("a")
    assert running.cancel.cancelled and precompute.cancel.cancelled   # every job of the document
    assert not queued.cancel.cancelled
    threading.Timer(0.1, release.set).start()
    t0 = time.perf_counter()
    worker.stop(timeout=5)
    assert queued.future.result(1) is None
    assert running.future.result(1) == "running"
    assert time.perf_counter() - t0 < 5
    assert worker.submit(("c", "inline"), lambda cancel: "late").future.result(1) is None   # stopped: answered empty


def test_a_delayed_job_waits_lets_ready_jobs_pass_and_is_replaced_unrun():
    """The debounce: ghost text while typing waits on the worker; a newer keystroke's job
    replaces it before it runs, and other jobs do not wait behind it."""
    worker, ran = Worker(), []
    t0 = time.monotonic()
    typed = worker.submit(("a", "inline"), lambda cancel: ran.append("typed") or "typed", delay=0.4)
    other = worker.submit(None, lambda cancel: ran.append("other") or time.monotonic())
    assert other.future.result(5) - t0 < 0.3                      # not held up by the waiting job
    newer = worker.submit(("a", "inline"), lambda cancel: ran.append("newer") or time.monotonic(), delay=0.2)
    assert typed.future.result(5) is None                         # replaced before its time came
    assert newer.future.result(5) - t0 >= 0.2                     # it waited its own delay
    assert ran == ["other", "newer"]
    worker.stop()
