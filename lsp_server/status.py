"""`latent/status`: a notification clients can show in a status bar.

    {"state": "loading" | "ready" | "error", "enabled": true, "model": "bundled",
     "message": "…", "lastLatencyMs": 12.5, "last": {…}, "lastModel": {…}, "cache": {…},
     "snoozedUntil": 1796000000.0}                    # only while snoozed (latent.toggle)

It is sent when the state changes, when `enable` flips and after every completion
(`last` describes that completion; `lastModel` the last one the model computed, with the same
keys — also one whose request the client cancelled after the model had answered, since
typing-through then answers the next keystrokes from it; `cache` holds the engine's cache
figures, refreshed at most once a second, and at once by latent.clearCache).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

METHOD = "latent/status"
CACHE_REFRESH_S = 1.0


@dataclass
class Status:
    state: str = "loading"
    model: str = ""
    message: str = ""
    enabled: bool = True
    snoozed_until: float | None = None   # a snooze (latent.toggle false, minutes) ends then: Unix seconds
    last: dict | None = None
    last_model: dict | None = None   # the last completion the model computed (source "model")
    cache: dict = field(default_factory=dict)
    _cache_at: float = -1e9

    def params(self) -> dict:
        out = {"state": self.state, "enabled": self.enabled, "model": self.model, "message": self.message,
               "cache": self.cache}
        if self.snoozed_until:
            out["snoozedUntil"] = self.snoozed_until
        if self.last is not None:
            out["lastLatencyMs"] = self.last.get("latencyMs")
            out["last"] = self.last
        if self.last_model is not None:
            out["lastModel"] = self.last_model
        return out

    def refresh_cache(self, engine, *, force: bool = False) -> None:
        """Re-read the engine's cache figures if the last reading is old, or now (worker thread)."""
        now = time.monotonic()
        if engine is None or (now - self._cache_at < CACHE_REFRESH_S and not force):
            return
        self._cache_at = now
        self.cache = cache_figures(engine.stats())


def cache_figures(stats: dict) -> dict:
    keys = {"cache_tokens": "tokens", "cache_bytes": "bytes", "cache_budget_bytes": "budgetBytes",
            "hit_rate": "hitRate", "evicted_tokens": "evictedTokens", "requests": "requests"}
    return {short: stats[key] for key, short in keys.items() if key in stats}


def send(session) -> None:
    """Send the session's status (event loop only)."""
    protocol = session.server.protocol
    if protocol.writer is not None:
        protocol.notify(METHOD, session.status.params())
