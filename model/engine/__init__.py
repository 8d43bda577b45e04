"""The in-process engine, one job per file.

- `core.py` — `Engine`: loading, the protocol (`generate`, `clear_cache`, `stats`), one
  computation at a time under a lock (generations take turns piece by piece);
- `radix.py` — `LatentCache`, the radix tree of token ids whose nodes own latent rows;
- `live.py` — `LiveBuffer`, the rows of the last sequence in place and the only code that
  changes them: reuse planning (exact prefixes; moved suffixes with shift reuse), and each
  computation's `Lease` on them (parking, restoring, pinning, filing);
- `generate.py` — prefill, decode, the sampler and the text stream;
- `step.py` — `Forward`: the model's forward as requests call it, its one-token decode step
  compiled ahead of time (in the background, cached on disk);
- `persist.py` — saving and restoring the cache across restarts.
"""
from .core import Engine, PromptTooLong
from .radix import LatentCache

__all__ = ["Engine", "LatentCache", "PromptTooLong"]
