"""Serving the engine: the shared daemon, its client, the OpenAI face and the remote backend.

- framing.py     the wire: length-prefixed msgpack frames, limits, the socket's place, shared helpers
- scheduler.py   clients, jobs and the FairScheduler that hands jobs to the one worker
- daemon.py      EngineDaemon: the socket, its clients, the worker
- connection.py  one socket client: handshake, requests, quick calls, replies
- client.py      EngineClient and starting a daemon; what a language server imports (no torch)
- remote.py      RemoteEngine: the engine protocol over an OpenAI-compatible server
- openai_api.py  the OpenAI completions format: request parsing, response bodies
- openai_http.py the daemon's OpenAI-compatible HTTP face (loopback, API key, limits)
- http_gate.py   the face's front door: every request's headers read on one thread, the key checked
- keys.py        the HTTP face's API key: made, kept beside the socket, checked
- cli.py         `latent engine serve | stop | status` (also `python -m model.serve`)

Importing this package imports none of them.
"""


def main(argv: list[str] | None = None) -> int:
    """`latent engine …` (lsp_server/cli.py delegates here)."""
    from .cli import main as run

    return run(argv)
