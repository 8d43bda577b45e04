"""A fuzz test of frames and params on the wire (tests/wire_fuzz.py; benchmarks/fuzz_lsp.py is
its longer run, `make fuzz`)."""
from __future__ import annotations

import time

import pytest

from wire_fuzz import Fuzz


@pytest.mark.slow
def test_fuzzed_frames_and_params(wire):
    """About 30 s of generated cases; `make fuzz` (benchmarks/fuzz_lsp.py) runs minutes of them."""
    server = wire()
    server.initialize(ready=False)
    fuzz = Fuzz(server, seed=12)
    deadline = time.monotonic() + 30
    while fuzz.counts["cases"] < 300 and time.monotonic() < deadline:
        fuzz.run()
        assert not fuzz.findings, fuzz.findings[0]
    assert fuzz.counts["cases"] >= 50 and fuzz.counts["bads"] >= 20, fuzz.counts
