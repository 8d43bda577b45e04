"""An OpenAI-compatible HTTP face for an engine: `POST /v1/completions`, `GET /v1/models`.

Served on loopback by `latent engine serve --http 127.0.0.1:PORT`, so any client of the
OpenAI completions API (streaming or not) can use Latent's engine and its latent reuse.
Beyond the OpenAI fields, `suffix` builds a fill-in-the-middle prompt with the model's own
FIM tokens. Errors are JSON `{"error": {"message": …}}` with status 400 / 404 / 500.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 8 << 20


class BadRequest(ValueError):
    pass


def parse_completion_request(body: dict, engine) -> dict:
    """OpenAI request fields -> engine.generate keyword arguments (plus the prompt)."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) for t in prompt):
            raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request).")
    elif not isinstance(prompt, str):
        raise BadRequest("'prompt' is required and must be a string.")
    suffix = body.get("suffix")
    if suffix is not None:
        fim = getattr(engine.tokenizer, "fim", None)
        if fim is None or not isinstance(prompt, str):
            raise BadRequest("'suffix' needs a text prompt and a model with fill-in-the-middle tokens.")
        prompt = fim_prompt(fim, prompt, str(suffix))
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if int(body.get("n", 1) or 1) != 1:
        raise BadRequest("Only n = 1 is supported.")
    try:
        return dict(
            prompt=prompt,
            max_new_tokens=int(body.get("max_tokens", 16) if body.get("max_tokens") is not None else 16),
            stop=[str(s) for s in stop],
            temperature=float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0),
            top_p=float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0),
            seed=int(body["seed"]) if body.get("seed") is not None else None,
        )
    except (TypeError, ValueError) as e:
        raise BadRequest(f"A numeric field is not a number ({e}).") from None


def fim_prompt(fim, prefix: str, suffix: str) -> str:
    """Prefix-suffix-middle in the family's layout (Codestral puts the suffix first)."""
    if fim.style == "codestral":
        return f"{fim.suffix}{suffix}{fim.prefix}{prefix}"
    return f"{fim.prefix}{prefix}{fim.suffix}{suffix}{fim.middle or ''}"


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def make_handler(engine):
    model_name = getattr(engine, "model_name", "latent")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "latent"

        def log_message(self, fmt, *args):  # quiet: the daemon logs its own way
            pass

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "created": 0, "owned_by": "latent"}]})
            else:
                self._error(404, f"No route for GET {self.path}.")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/completions":
                self._error(404, f"No route for POST {self.path}.")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise BadRequest(f"The body exceeds {MAX_BODY} bytes.")
                body = json.loads(self.rfile.read(length) or b"null")
                kwargs = parse_completion_request(body, engine)
            except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
                self._error(400, str(e) if isinstance(e, BadRequest) else "The body is not valid JSON.")
                return
            try:
                if body.get("stream"):
                    self._stream(kwargs)
                else:
                    self._complete(kwargs)
            except ValueError as e:
                self._error(400, str(e))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _complete(self, kwargs):
            gen = engine.generate(**kwargs)
            text = gen.run()
            s = gen.stats
            self._json(200, {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": _finish(s.finish_reason)}],
                "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
                          "total_tokens": s.prompt_tokens + s.generated_tokens},
            })

        def _stream(self, kwargs):
            from .protocol import CancelToken

            cancel = CancelToken()
            gen = engine.generate(cancel=cancel, **kwargs)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

            def event(text, reason=None):
                chunk = {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            try:
                for piece in gen:
                    event(piece)
                event("", _finish(gen.stats.finish_reason))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                cancel.cancel()  # the client went away: stop at the next decode step
                for _ in gen:
                    pass
            self.close_connection = True

        def _json(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, message):
            self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    return Handler


def serve_http(engine, host: str, port: int) -> ThreadingHTTPServer:
    """Start serving in a background thread; returns the server (call .shutdown() to stop)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"The HTTP face binds to loopback only, not {host!r}.")
    server = ThreadingHTTPServer((host, port), make_handler(engine))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="latent-http", daemon=True).start()
    return server
