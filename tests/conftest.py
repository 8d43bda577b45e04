"""Fixtures shared by the daemon tests (test_rpc, test_serve_security): a tiny random checkpoint
and an engine loaded from it, one per module."""
from __future__ import annotations

import pytest

from model.engine import Engine
from tiny_models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint("v2-greedy-yarn", folder)
    return folder


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.load(checkpoint)
