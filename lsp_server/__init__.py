"""The Latent language server and the `latent` command, one job per module.

The command line
    cli              the `latent` command: lsp, complete, info, and the commands it hands on
    repl             `latent repl`: a Python prompt with ghost text (no server; no pygls)
    settings         Settings derived from the options they set, their layers and merging
                     (which are the user's own), and the settings flags every command shares
                     (no pygls)
    engines          the engine the settings ask for: in-process, daemon or OpenAI-compatible
                     (plain http to another machine only with the user's opt-in)
    logs             log records to stderr and, in a server, to the client

The server
    server           the pygls server: wiring, stdio and TCP through the transport, errors
                     outside requests
    transport        LSP frames cut from a byte stream, robust to malformed ones: size limit,
                     resynchronisation, exit when the stream cannot be read
    messages         what a JSON-RPC message must be before pygls reads it: ids, methods,
                     positions, a didChange's valid changes (no pygls)
    protocol         what pygls' protocol leaves out, through its public methods: strict
                     decoding, the lifecycle (not initialized, shutting down), UTF-16, request
                     arrival and cancellation, document sync without a copy
    session          one server's state: documents, settings, status, worker, engine/service
    requests         a background request's life: snapshot, job, supersession, cancellation,
                     exactly one answer
    worker           the one thread that runs completions and engine commands, newest first
    loading          loading the model in the background, with progress
    status           the `latent/status` notification
  one module per LSP method or group:
    lifecycle        initialize, initialized, shutdown, exit
    documents        didOpen, didChange, didClose (and LSP ↔ completion positions), documents
                     too large to parse, copies that diverged
    inline           textDocument/inlineCompletion
    completion_list  textDocument/completion
    commands         workspace/executeCommand: latent.toggle, .stats, .clearCache, .accepted
    settings_sync    workspace/didChangeConfiguration
"""
from importlib import metadata

try:
    VERSION = metadata.version("latent-coder")
except metadata.PackageNotFoundError:
    VERSION = "0.1.0"
