"""An OpenAI-compatible HTTP face for an engine: `POST /v1/completions`, `GET /v1/models`.

Served on loopback by `latent engine serve --http 127.0.0.1:PORT`, so any client of the
OpenAI completions API (streaming or not) can use Latent's engine and its latent reuse.
Beyond the OpenAI fields, `suffix` builds a fill-in-the-middle prompt with the model's own
FIM tokens (model/fim.py), and `top_k` / `stop_token_ids` are taken as vLLM takes them.
Errors are JSON `{"error": {"message": …}}` with status 400 / 404.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from model.params import OptionError, SamplingParams
from model.protocol import CancelToken

MAX_BODY = 8 << 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")   # the only hosts the face binds to
DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0}   # OpenAI's, where it has them


class BadRequest(ValueError):
    """A request the face cannot serve; str(error) is the one sentence sent back with a 400."""


def parse_completion_request(body: dict, engine) -> tuple[str | list[int], SamplingParams]:
    """An OpenAI completions request as the engine's prompt and sampling parameters."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if (body.get("n") or 1) != 1:
        raise BadRequest("Only n = 1 is supported.")
    prompt = _prompt(body.get("prompt"))
    if body.get("suffix") is not None:
        fmt = getattr(engine.tokenizer, "fim", None)
        if fmt is None or not isinstance(prompt, str):
            raise BadRequest("'suffix' needs a text prompt and a model with fill-in-the-middle tokens.")
        prompt = fmt.fill(prompt, str(body["suffix"]))
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings.")
    if not isinstance(stop_ids, list):
        raise BadRequest("'stop_token_ids' must be a list of token ids.")
    given = {key: body[key] if body.get(key) is not None else default for key, default in DEFAULTS.items()}
    try:
        params = SamplingParams(max_new_tokens=given["max_tokens"], stop=tuple(stop), stop_token_ids=tuple(stop_ids),
                                temperature=given["temperature"], top_p=given["top_p"], top_k=given["top_k"],
                                seed=body.get("seed"))
    except OptionError as e:
        raise BadRequest(str(e)) from None
    return prompt, params


def _prompt(prompt) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request).")
        return prompt
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' is required and must be a string.")
    return prompt


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
                prompt, params = parse_completion_request(body, engine)
            except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
                self._error(400, str(e) if isinstance(e, BadRequest) else "The body is not valid JSON.")
                return
            try:
                if body.get("stream"):
                    self._stream(prompt, params)
                else:
                    self._complete(prompt, params)
            except ValueError as e:   # the engine's: an empty prompt, one longer than the context
                self._error(400, str(e))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _complete(self, prompt, params: SamplingParams):
            gen = engine.generate(prompt, params)
            text = gen.run()
            s = gen.stats
            self._json(200, {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": _finish(s.finish_reason)}],
                "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
                          "total_tokens": s.prompt_tokens + s.generated_tokens},
            })

        def _stream(self, prompt, params: SamplingParams):
            cancel = CancelToken()
            gen = engine.generate(prompt, params, cancel=cancel)
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
    if host not in LOOPBACK:
        raise ValueError(f"The HTTP face binds to loopback only, not {host!r}.")
    server = ThreadingHTTPServer((host, port), make_handler(engine))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="latent-http", daemon=True).start()
    return server
