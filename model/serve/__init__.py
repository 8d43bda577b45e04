"""Serving the engine: the shared daemon, its client, the OpenAI face and the remote backend.

- framing.py     the wire: length-prefixed msgpack frames, the socket's place, shared helpers
- daemon.py      EngineDaemon (connections, dispatch) and its FairScheduler
- client.py      EngineClient and starting a daemon; what a language server imports (no torch)
- remote.py      RemoteEngine: the engine protocol over an OpenAI-compatible server
- openai_http.py the OpenAI-compatible /v1/completions face of an engine
- cli.py         `latent engine serve | stop | status` (also `python -m model.serve`)

Importing this package imports none of them.
"""


def main(argv: list[str] | None = None) -> int:
    """`latent engine …` (lsp_server/cli.py delegates here)."""
    from .cli import main as run

    return run(argv)
