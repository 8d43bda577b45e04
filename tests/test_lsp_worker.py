"""The completion worker: one job at a time, the newest job per (document, kind) wins. No model."""
from __future__ import annotations

import threading

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
    worker, log = Worker(name="latent-test-stop"), []
    started, release = threading.Event(), threading.Event()
    running = worker.submit(("a", "inline"), _blocking_job(started, release, log, "running"))
    assert started.wait(5)
    precompute = worker.submit(("a", "precompute"), lambda cancel: "never")
    queued = worker.submit(("b", "inline"), lambda cancel: "never")
    worker.forget("a")
    assert running.cancel.cancelled and precompute.cancel.cancelled   # every job of the document
    assert not queued.cancel.cancelled
    threading.Timer(0.1, release.set).start()
    worker.stop(timeout=60)                                            # the timeout only stops a hang
    assert "latent-test-stop" not in {t.name for t in threading.enumerate()}   # the thread ended: stop did not wait it out
    assert queued.future.result(1) is None
    assert running.future.result(1) == "running"
    assert worker.submit(("c", "inline"), lambda cancel: "late").future.result(1) is None   # stopped: answered empty


def test_a_delayed_job_waits_lets_ready_jobs_pass_and_is_replaced_unrun():
    """The debounce: ghost text while typing waits on the worker; a newer keystroke's job
    replaces it before it runs, and other jobs do not wait behind it. Nothing here reads a
    clock: a job that waits is one that jobs queued after it overtake (delays of ten minutes
    cannot pass during the test), and a short delay must pass for its job to run at all."""
    worker, ran = Worker(), []
    typed = worker.submit(("a", "inline"), lambda cancel: ran.append("typed") or "typed", delay=600)
    other = worker.submit(None, lambda cancel: ran.append("other") or typed.future.done())
    assert other.future.result(60) is False                      # not held up by the waiting job
    newer = worker.submit(("a", "inline"), lambda cancel: ran.append("newer") or "newer", delay=600)
    after = worker.submit(None, lambda cancel: ran.append("after") or newer.future.done())
    assert typed.future.result(60) is None                        # replaced before its time came
    assert after.future.result(60) is False                       # the newer one waits its own delay …
    soon = worker.submit(None, lambda cancel: ran.append("soon") or "soon", delay=0.2)
    assert soon.future.result(60) == "soon"                       # … and a delay that passes lets its job run
    assert ran == ["other", "after", "soon"]
    worker.stop()
    assert newer.future.result(1) is None                         # stopped before its time came: answered empty
