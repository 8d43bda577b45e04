"""The OpenAI completions API, as the daemon sees it: a request body read into a prompt and
SamplingParams, and the response bodies. Pure functions; the server is openai_http.py.

Beyond the OpenAI fields, `suffix` builds a fill-in-the-middle prompt with the model's own FIM
tokens (model/fim.py), and `top_k` / `stop_token_ids` are taken as vLLM takes them. Only
n = 1 is served. `max_tokens` is from 1 (0 is a 400, as vLLM answers it: the face has no
`echo` that would make 0 tokens useful) to SamplingParams' limit (65536); more is a 400, as is
any value SamplingParams refuses (a `seed` beyond 64-bit signed integers among them, as vLLM),
a number JSON does not have (NaN, Infinity, 1e999) and a body nested too deeply to parse. Errors are `{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

import json
import math
import re
import time
import uuid

from model.params import OptionError, SamplingParams

MAX_BODY = 8 << 20
DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0}   # OpenAI's, where it has them


class BadRequest(ValueError):
    """A request the face cannot serve; str(error) is the one sentence sent back."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.status, self.code = status, code


# ---------------------------------------------------------------------------------------------
# requests

def body_length(values: list[str]) -> int:
    """The body's size from its Content-Length header(s); BadRequest for none, a malformed one
    or one over MAX_BODY."""
    if not values:
        raise BadRequest("A Content-Length header is required (chunked bodies are not taken).", 411,
                         "length_required")
    raw = {v.strip() for v in values}
    if len(raw) != 1 or not re.fullmatch(r"[0-9]{1,15}", next(iter(raw))):
        raise BadRequest("Content-Length must be one whole number of bytes.", code="invalid_content_length")
    size = int(next(iter(raw)))
    if size > MAX_BODY:
        raise BadRequest(f"The body has {size} bytes; at most {MAX_BODY} are taken.", 413, "body_too_large")
    return size


def parse_json(raw: bytes) -> dict:
    """A request body as a JSON object; BadRequest for anything else."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("The body nests JSON too deeply.", code="invalid_json") from None
    except ValueError:   # JSONDecodeError, UnicodeDecodeError
        raise BadRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def parse_completion_request(body: dict, engine) -> tuple[str | list[int], SamplingParams]:
    """An OpenAI completions request as the engine's prompt and sampling parameters."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise BadRequest("Only n = 1 is supported ('n' must be the integer 1 or absent).")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be true or false.")
    prompt = _prompt(body.get("prompt"))
    if body.get("suffix") is not None:
        fmt = getattr(engine.tokenizer, "fim", None)
        if fmt is None or not isinstance(prompt, str) or not isinstance(body["suffix"], str):
            raise BadRequest("'suffix' needs a text prompt, a text suffix and a model with fill-in-the-middle tokens.")
        prompt = fmt.fill(prompt, body["suffix"])
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings.")
    if not isinstance(stop_ids, list):
        raise BadRequest("'stop_token_ids' must be a list of token ids.")
    given = {key: body[key] if body.get(key) is not None else default for key, default in DEFAULTS.items()}
    if given["max_tokens"] == 0 and type(given["max_tokens"]) is int:
        raise BadRequest("max_tokens must be at least 1, got 0.")
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


def _no_constant(name: str):
    raise BadRequest(f"The body holds {name}, which is not a JSON number.", code="invalid_json")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"The number {text[:40]} in the body is too large.", code="invalid_json")
    return value


# ---------------------------------------------------------------------------------------------
# responses

def error_body(status: int, message: str, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(model: str, text: str, stats: dict) -> dict:
    prompt_tokens, generated = stats.get("prompt_tokens", 0), stats.get("generated_tokens", 0)
    return {
        "id": completion_id(), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish(stats)}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                  "total_tokens": prompt_tokens + generated},
    }


def chunk_body(cid: str, created: int, model: str, text: str, reason: str | None = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}


def finish(stats: dict) -> str:
    return "length" if stats.get("finish_reason") == "length" else "stop"
