"""The shared engine daemon: one engine served to many clients over a Unix socket.

The wire is described in framing.py. The socket is created with mode 0600 and peers of
another user are refused; each connection is served on its own thread (connection.py). A
malformed or oversized frame gets an error reply and closes that connection; the daemon keeps
serving the others. Generations run on one worker thread, in turns the FairScheduler
(scheduler.py) hands out — the HTTP face's requests too, all of them one party. A turn lasts
until the generation ends or, while other work waits, TURN_STEPS decode steps: then the next
party's job runs, and the paused generation goes on at its own party's next turn from where
it stopped (the engine keeps its latent rows in its cache meanwhile), so one long generation
cannot hold up an editor's short one. At exit the daemon saves the hottest cache entries to
its `persist` file, and restores them at its next start — only where no other user can write
the folder (private_files.py); elsewhere one log line says so and it serves without
persistence.

No client can hold up the others: each has at most MAX_QUEUED generations waiting, prompts
have size limits (framing.py; a text prompt also no longer than the engine's context could
hold, checked before the tokenizer — which holds the interpreter while it works — sees it),
a client that leaves a reply unread for SEND_TIMEOUT seconds is dropped and its jobs
cancelled (connection.py), and when accept() runs out of file descriptors the daemon waits
for some to be freed instead of exiting.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from model.params import SamplingParams
from model.private_files import unsafe_folder

from .connection import Connection
from .framing import (
    MAX_PROMPT_CHARS,
    MAX_PROMPT_IDS,
    PROTOCOL_VERSION,
    AcceptBackoff,
    RPCError,
    check_socket_path,
    close_quietly,
    plain,
    sentence,
    socket_alive,
)
from .scheduler import Client, FairScheduler, Job, Refused

if TYPE_CHECKING:
    from .openai_http import FaceServer

log = logging.getLogger("latent.engine")
TURN_STEPS = 16   # decode steps a generation runs before waiting work of other clients goes first
WORKER_EXIT_S = 30.0   # close() waits this long at most for the worker's turn to end (one decode step, its jobs cancelled)


class EngineDaemon:
    """Serves one engine to many clients; see framing.py for the wire."""

    def __init__(self, engine, socket_path: Path, idle_exit_s: float | None = None,
                 persist: Path | None = None) -> None:
        self.engine = engine
        self.socket_path = Path(socket_path)
        self.idle_exit_s = idle_exit_s
        self.persist = Path(persist) if persist else None   # where the cache is kept across restarts
        self.http: FaceServer | None = None                   # the OpenAI face, when one is served
        self._scheduler = FairScheduler()
        self.max_prompt_chars = prompt_chars_limit(engine)
        self._stop = threading.Event()
        self._last_activity = time.monotonic()
        self._clients: set[Client] = set()
        self._server: socket.socket | None = None
        self._worker: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def bind(self) -> socket.socket:
        """Listen at the socket path (replacing a stale socket file); returns the listening socket."""
        path = self.socket_path
        check_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            if socket_alive(path):
                raise RPCError(f"An engine daemon is already serving at {path}.")
            path.unlink()  # a stale socket left by a daemon that died
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        server.listen(16)
        server.settimeout(0.5)
        self._server = server
        return server

    def serve_forever(self) -> None:
        server = self._server if self._server is not None else self.bind()
        self._restore_cache()
        worker = threading.Thread(target=self._work, name="latent-engine-worker", daemon=True)
        worker.start()
        self._worker = worker   # started: close() may join it
        log.info("engine daemon serving %s at %s", getattr(self.engine, "model_name", "?"), self.socket_path)
        backoff = AcceptBackoff(f"engine daemon at {self.socket_path}")
        try:
            while not self._stop.is_set():
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    self._maybe_idle_exit()
                    continue
                except OSError as e:
                    if backoff(e):
                        continue
                    break
                backoff.accepted()
                threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()
        self._scheduler.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop serving, save the cache, drop every client (cancelling its jobs) and wait for the
        worker to end its turn: once this returns the daemon computes nothing more."""
        self.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
            self._save_cache()
        if self.http is not None:
            self.http.close()
        try:
            self.socket_path.unlink(missing_ok=True)
        except OSError:
            pass
        for client in list(self._clients):
            client.drop()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=WORKER_EXIT_S)

    def _restore_cache(self) -> None:
        """Load the saved cache, where no other user can have planted it; where they could,
        say so once and serve without persistence."""
        if self.persist is None:
            return
        problem = unsafe_folder(self.persist.parent)
        if problem is not None and self.persist.parent.exists():
            log.warning("not keeping the cache across restarts: %s", problem.rstrip("."))
            self.persist = None
            return
        if not self.persist.exists():
            return
        try:
            restored = self.engine.load_cache(self.persist)
            log.info("restored %d cached tokens from %s", restored, self.persist)
        except PermissionError as e:
            log.warning("not restoring the cache: %s", str(e).rstrip("."))

    def _save_cache(self) -> None:
        if self.persist is None:
            return
        try:
            saved = self.engine.save_cache(self.persist)
            log.info("saved %d cached tokens to %s", saved, self.persist)
        except OSError as e:
            log.warning("could not save the cache to %s: %s", self.persist, e)

    def _maybe_idle_exit(self) -> None:
        if self.idle_exit_s is None or self._scheduler.pending or self._clients:
            return
        if time.monotonic() - self._last_activity > self.idle_exit_s:
            log.info("idle for %.0f s: exiting", self.idle_exit_s)
            self.stop()

    def touch(self) -> None:
        """Note activity: the idle exit counts from the last."""
        self._last_activity = time.monotonic()

    # -- clients: the socket's (connection.py) and the HTTP face's (openai_http.py) ---------
    def _serve_connection(self, sock: socket.socket) -> None:
        if _same_user(sock):
            Connection(sock, self).serve()
        else:
            close_quietly(sock)

    def attach(self, client: Client) -> None:
        self._clients.add(client)
        self.touch()

    def release(self, client: Client) -> None:
        """A client went away: stop its jobs and forget what it still had queued."""
        client.drop()
        self._clients.discard(client)
        for job in self._scheduler.forget(client):
            self._end(job)
        self.touch()

    def queue(self, client: Client, request_id: int, prompt: str | list[int], params: SamplingParams) -> Job:
        """Queue one generation for the worker; Refused (one sentence) for a prompt over the
        limits or a client with too many generations waiting."""
        if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
            raise Refused(f"The prompt has {len(prompt)} characters; "
                          f"the daemon takes at most {MAX_PROMPT_CHARS} characters.")
        if isinstance(prompt, str) and len(prompt) > self.max_prompt_chars:
            raise Refused(f"The prompt has {len(prompt)} characters, more than the context of "
                          f"{_context(self.engine)} tokens can hold (at most {self.max_prompt_chars} characters).")
        if not isinstance(prompt, str) and len(prompt) > MAX_PROMPT_IDS:
            raise Refused(f"The prompt has {len(prompt)} token ids; "
                          f"the daemon takes at most {MAX_PROMPT_IDS} token ids.")
        job = Job(client, request_id, prompt, params)
        client.jobs[request_id] = job
        if not self._scheduler.put(job):
            client.jobs.pop(request_id, None)
            raise Refused(f"Too many requests queued ({self._scheduler.max_queued}); "
                          f"wait for their answers or cancel some first.")
        self.touch()
        return job

    def cancel(self, job: Job) -> None:
        """Cancel a job; one waiting in the queue (for its first turn or its next) is taken out
        and answered at once."""
        job.cancel.cancel()
        if self._scheduler.remove(job):
            self._end(job)
            job.client.send({"id": job.id, "done": True, "stats": {"finish_reason": "cancelled"}})

    def info(self) -> dict:
        e = self.engine
        return {
            "model": getattr(e, "model_name", "?"),
            "model_dir": str(getattr(e, "model_dir", "") or ""),
            "fim_format": e.fim_format,
            "fim_layouts": list(e.fim_layouts),
            "languages": list(e.languages),
            "context_length": getattr(e, "context_length", None),
            "pid": os.getpid(),
            "version": PROTOCOL_VERSION,
        }

    # -- the one computation ----------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._scheduler.take()) is not None:
            try:
                more = self._turn(job)
            except Exception:   # not even an error reply could be sent; the turn ended the job
                log.exception("request %s: no reply could be sent", job.id)
                more = False
            if more and not self._scheduler.resume(job):
                self._end(job)              # its client left during the turn
        for job in self._scheduler.drain():
            self._end(job)

    def _turn(self, job: Job) -> bool:
        """Run `job` until it ends or, while other work waits, for TURN_STEPS decode steps;
        True when it has more to do (its generation is paused, not closed). However the turn
        ends otherwise — finished, failed, or a reply that raised — the job is ended and its
        generation closed."""
        client = job.client
        paused = False
        try:
            gen = job.generation
            if gen is None:
                if client.closed or job.cancel.cancelled:
                    client.send({"id": job.id, "done": True, "stats": {"finish_reason": "cancelled"}})
                    return False
                gen = job.generation = self.engine.generate(job.prompt, job.params, cancel=job.cancel)
            until = gen.stats.generated_tokens + TURN_STEPS
            for piece in gen:  # figures travel with every piece: a client may stop reading early
                client.send({"id": job.id, "chunk": piece, "stats": plain(gen.stats.as_dict())})
                if gen.stats.generated_tokens >= until and self._scheduler.pending and not job.cancel.cancelled:
                    paused = True
                    return True
            client.send({"id": job.id, "done": True, "stats": plain(gen.stats.as_dict())})
        except ValueError as e:   # the engine's verdict on the request: empty, too long, bad ids
            client.send({"id": job.id, "error": sentence(e), "bad_request": True})
        except Exception as e:  # the daemon outlives any one request
            log.exception("request %s failed", job.id)
            client.send({"id": job.id, "error": sentence(e)})
        finally:
            if not paused:
                self._end(job)
        return False

    def _end(self, job: Job) -> None:
        """Let a job go: its generation closed (should it have stopped midway), its id freed."""
        if job.generation is not None:
            job.generation.close()
        job.client.jobs.pop(job.id, None)
        self.touch()


def prompt_chars_limit(engine) -> int:
    """The most characters a text prompt may have: MAX_PROMPT_CHARS, and no more than the
    engine's context could hold were every token as long as its tokenizer's longest."""
    longest = getattr(engine.tokenizer, "longest_token_chars", None)
    context = _context(engine)
    return min(MAX_PROMPT_CHARS, context * longest) if context and longest else MAX_PROMPT_CHARS


def _context(engine) -> int | None:
    """Tokens the engine's working buffer holds (what it refuses a prompt beyond)."""
    runtime = getattr(engine, "runtime", None)
    return getattr(runtime, "max_context", None) or getattr(engine, "context_length", None)


def _same_user(sock: socket.socket) -> bool:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return True  # platforms without SO_PEERCRED rely on the socket's 0600 mode
    return uid == os.getuid()

