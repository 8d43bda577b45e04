"""Fixtures shared by several test files: for the daemon tests (test_rpc, test_serve_security) a
tiny random checkpoint and an engine loaded from it, one per module; for the wire tests
(test_lsp_wire_*) `wire`, which starts `latent lsp` processes and checks their own output."""
from __future__ import annotations

import pytest

from model.engine import Engine
from tiny_models import save_checkpoint
from wire_helpers import Wire


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint("v2-greedy-yarn", folder)
    return folder


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.load(checkpoint)


@pytest.fixture
def wire(tmp_path):
    servers = []

    def start(env: dict | None = None, **settings) -> Wire:
        servers.append(Wire(tmp_path, env, **settings))
        return servers[-1]

    yield start
    for server in servers:
        assert not server.malformed, server.malformed   # the server's own output is always well-formed
        server.close()
