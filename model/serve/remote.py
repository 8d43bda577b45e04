"""The engine protocol over an OpenAI-compatible `/v1/completions` server.

For teams that run the model on a serving engine — vLLM or SGLang across GPUs, llama.cpp's
server, or Latent's own daemon with `--http`. FIM prompts are built locally with the family's
special tokens in the prompt text (servers' `suffix` support varies), so the remote server
only ever sees a plain completion request. Cancellation closes the stream.

The API key comes from the environment variable named by `api_key_env`. Without one, a URL
naming the loopback address where this user's own daemon serves its HTTP face
(http://127.0.0.1:PORT or http://[::1]:PORT, as `latent engine serve --http` printed it) uses
the key that daemon wrote beside its socket (keys.py); no other server is ever sent it.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Sequence

from model.fim import FORMATS
from model.params import SamplingParams
from model.protocol import CancelToken, Generation, GenerationStats
from model.tokenizer import Tokenizer

from . import keys

STOP_LIMIT = 4   # stop strings OpenAI accepts; most servers take as many


class RemoteError(Exception):
    """The remote server could not be reached or refused the request; one sentence."""


class ApproxTokenizer:
    """Token counts estimated from bytes, for budgets when no tokenizer files are at hand.

    Special-token strings of the chosen FIM family (model.fim.FORMATS) count as one token each.
    """

    def __init__(self, fim_format: str = "deepseek", bytes_per_token: float = 3.6) -> None:
        fmt = FORMATS[fim_format]
        self.fim = fmt if fmt.prefix is not None else None
        self.bos_id = self.eos_id = None
        self.add_bos = False
        self.bytes_per_token = bytes_per_token
        self._specials = fmt.tokens
        self.special_tokens: tuple[str, ...] = ()   # none beyond the FIM family's, which prompts neutralise anyway

    def count(self, text: str) -> int:
        specials = 0
        for s in self._specials:
            n = text.count(s)
            if n:
                specials += n
                text = text.replace(s, "")
        return specials + int(len(text.encode()) / self.bytes_per_token + 0.999)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        return list(range(self.count(text)))   # only the length is meaningful

    def decode(self, ids: Sequence[int]) -> str:
        raise RemoteError("An estimated tokenizer cannot decode; configure `tokenizer` with a folder.")


class RemoteEngine:
    def __init__(self, url: str, *, model: str | None = None, api_key_env: str | None = None,
                 tokenizer_dir: str | None = None, fim_format: str = "deepseek", timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RemoteError(f"Remote engine URL {url!r} is not an http(s) address.")
        self.url, self.parsed, self.host = url, parsed, parsed.hostname
        self.base_path = parsed.path.rstrip("/")
        if not self.base_path.endswith("/v1"):
            self.base_path += "/v1"
        self.timeout = timeout
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise RemoteError(f"The API key variable {api_key_env} named in the configuration is not set.")
        elif parsed.hostname in ("127.0.0.1", "::1"):
            self.api_key = keys.local_key(parsed.hostname, parsed.port)   # our own daemon's face, if it is
        if tokenizer_dir:
            self.tokenizer = Tokenizer.from_dir(Path(tokenizer_dir).expanduser())
        else:
            self.tokenizer = ApproxTokenizer(fim_format)
        self.model = model or self._first_model()
        self.model_name = f"{self.model} @ {parsed.netloc}"

    @property
    def fim_format(self) -> str | None:
        return self.tokenizer.fim.name if self.tokenizer.fim else None

    @property
    def fim_layouts(self) -> tuple[str, ...]:
        """None declared: the OpenAI API does not say how a served model was trained, so
        prompts take PSM, the layout every FIM model knows."""
        return ()

    @property
    def languages(self) -> tuple[str, ...]:
        """None declared: any language."""
        return ()

    @property
    def context_length(self) -> int | None:
        """Unknown: the server refuses what does not fit its own context."""
        return None

    # -- the protocol -----------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(), *,
                 cancel: CancelToken | None = None) -> Generation:
        if params.heal:   # no token healing over the OpenAI API: the text goes back on the prompt,
            prompt = (prompt + params.heal if isinstance(prompt, str)          # and heads the answer as promised
                      else [*prompt, *self.tokenizer.encode(params.heal)])
        body = {"model": self.model, "prompt": prompt if isinstance(prompt, str) else list(prompt),
                "max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "stream": True}
        if params.stop:
            body["stop"] = list(params.stop)[:STOP_LIMIT]
        if params.seed is not None:
            body["seed"] = params.seed
        if params.top_k:
            body["top_k"] = params.top_k                           # vLLM / SGLang / llama.cpp extension
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)   # vLLM / SGLang extension
        if params.suppress_token_ids:                               # OpenAI's ban: -100 (vLLM, llama.cpp)
            body["logit_bias"] = {str(token): -100 for token in params.suppress_token_ids}
        stats = GenerationStats()
        stream = self._stream(body, stats, cancel or CancelToken())
        return Generation(_headed(params.heal, stream) if params.heal else stream, stats)

    def clear_cache(self) -> None:
        """Nothing to do here: the remote server owns its cache, and the OpenAI API has no call
        to empty it."""

    def stats(self) -> dict:
        return {"model": self.model_name, "engine": "remote", "url": self.url, "fim_format": self.fim_format}

    # -- http -------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.parsed.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.parsed.port, timeout=self.timeout)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request(self, method: str, route: str, body: dict | None = None):
        conn = self._connection()
        try:
            conn.request(method, self.base_path + route, body=json.dumps(body) if body is not None else None,
                         headers=self._headers())
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RemoteError(f"The remote engine at {self.parsed.netloc} cannot be reached ({_reason(e)}).") from None
        if response.status >= 400:
            detail = _error_detail(response.read())
            conn.close()
            raise RemoteError(f"The remote engine answered {response.status}: {detail}")
        return conn, response

    def _first_model(self) -> str:
        conn, response = self._request("GET", "/models")
        try:
            data = json.loads(response.read() or b"{}").get("data") or []
        except json.JSONDecodeError:
            data = []
        finally:
            conn.close()
        if not data:
            raise RemoteError(f"The remote engine at {self.parsed.netloc} lists no models; set `model`.")
        return data[0]["id"]

    def _stream(self, body: dict, stats: GenerationStats, cancel: CancelToken) -> Iterator[str]:
        if cancel.cancelled:
            stats.finish_reason = "cancelled"
            return
        t0 = time.perf_counter()
        conn, response = self._request("POST", "/completions", body)
        first = None
        try:
            for event in _sse_events(response):
                if cancel.cancelled:
                    stats.finish_reason = "cancelled"
                    return
                choice = (event.get("choices") or [{}])[0]
                piece = choice.get("text") or ""
                if piece:
                    first = first or time.perf_counter()
                    stats.generated_tokens += 1
                    yield piece
                if choice.get("finish_reason"):
                    stats.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                usage = event.get("usage") or {}
                if usage:
                    stats.prompt_tokens = usage.get("prompt_tokens", stats.prompt_tokens)
                    stats.generated_tokens = usage.get("completion_tokens", stats.generated_tokens)
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"The remote engine's stream broke off ({_reason(e)}).") from None
        finally:
            conn.close()
            now = time.perf_counter()
            stats.prefill_ms = ((first or now) - t0) * 1e3
            stats.decode_ms = (now - (first or now)) * 1e3
            stats.finish_reason = stats.finish_reason or "stop"


def _sse_events(response) -> Iterator[dict]:
    """`data: {...}` lines of a server-sent event stream (or one plain JSON body)."""
    content_type = response.getheader("Content-Type", "")
    if "event-stream" not in content_type:
        yield json.loads(response.read() or b"{}")
        return
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            raise RemoteError("The remote engine sent an event that is not JSON.") from None


def _error_detail(raw: bytes) -> str:
    try:
        message = json.loads(raw).get("error")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            return str(message)
    except (json.JSONDecodeError, AttributeError):
        pass
    return raw.decode("utf-8", "replace")[:200] or "no details"


def _reason(e: Exception) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    return str(e) or type(e).__name__


def _headed(head: str, stream: Iterator[str]) -> Iterator[str]:
    """`head`, then the stream's pieces (closing this closes the stream)."""
    yield head
    yield from stream
