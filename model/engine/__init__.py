"""The in-process engine, one job per file.

- `core.py` — `Engine`: loading, the protocol (`generate`, `clear_cache`, `stats`), one request
  at a time under a lock;
- `radix.py` — `LatentCache`, the radix tree of token ids whose nodes own latent rows;
- `live.py` — `LiveBuffer`, the rows of the last sequence in place, and reuse planning
  (exact prefixes; moved suffixes with shift reuse);
- `generate.py` — prefill, decode, the sampler and the text stream;
- `step.py` — `Forward`: the model's forward as requests call it, its one-token decode step
  compiled ahead of time (in the background, cached on disk);
- `persist.py` — saving and restoring the cache across restarts.
"""
from .core import Engine, PromptTooLong
from .radix import LatentCache

__all__ = ["Engine", "LatentCache", "PromptTooLong"]
