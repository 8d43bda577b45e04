"""The session: one language server's state, for its whole lifetime.

It owns the open documents (one completion.Workspace, kept across model reloads), the
settings (their layers and the merged result), the status, the worker and the in-flight
requests. The engine and its completion service are installed as a pair once a model loads,
and dropped before another loads; the documents stay.

Notifications mutate the session on the event loop; requests read snapshots on the worker.
`server` is the pygls LanguageServer that talks to the client (see server.create).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from completion import CompletionService, Workspace
from lsp_server import logs, status
from lsp_server.loading import ensure_model
from lsp_server.requests import Requests
from lsp_server.settings import Settings, SettingsStore
from lsp_server.status import Status
from lsp_server.worker import Worker
from model.protocol import EngineProtocol

if TYPE_CHECKING:
    from lsp_server.server import LatentServer

log = logging.getLogger(__name__)


class Session:
    server: LatentServer   # the pygls LanguageServer that talks to the client (server.create sets it)

    def __init__(self, store: SettingsStore, warnings: list[str] | None = None) -> None:
        self.store = store
        self.settings, more = store.settings()
        self.startup_warnings = list(warnings or []) + more
        self.documents = Workspace(max_parse_chars=self.settings.max_parse_kb << 10,
                                   max_chars=_max_chars(self.settings))
        self.stale: set[str] = set()             # documents whose copy diverged (documents.diverged)
        self.unparsed: set[str] = set()          # documents over max_parse_kb, said once
        self.refused: dict[str, None] = {}       # documents not kept, over the bound (documents.refuse)
        self.status = Status(enabled=self.settings.enable, model=self.settings.model or "bundled")
        self.worker = Worker()
        self.requests = Requests(self)
        self.engine: EngineProtocol | None = None
        self.service: CompletionService | None = None
        self.loading = False                     # loading.ensure_model's: a load runs …
        self.attempted_key: tuple | None = None  # … or ran, for these engine settings
        self.told_remote: set[str] = set()       # remote engine URLs named to the user (loading.py)
        self.initialized = False
        self.shut_down = False
        self.exit_code: int | None = None
        self.log_handler: logs.ClientHandler | None = None
        self._tasks: set[asyncio.Task] = set()
        self._snooze: asyncio.TimerHandle | None = None   # latent.toggle's timer that ends a snooze

    # -- the engine and its service ------------------------------------------------------------
    def install(self, engine: EngineProtocol, settings: Settings) -> None:
        """Serve completions from a loaded engine, over the open documents."""
        self.service = CompletionService(engine, settings.completion_config(), workspace=self.documents)
        self.engine = engine
        self.status.cache = {}
        self.status.last_model = None   # another engine: the old one's figures say nothing of it

    def workspace_root(self) -> str | None:
        """The folder the client opened (its first workspace folder, or the root path)."""
        from pygls.uris import to_fs_path

        try:
            workspace = self.server.workspace
        except (AttributeError, RuntimeError):      # no server yet, or not initialized
            return None
        for folder in workspace.folders.values():
            path = to_fs_path(folder.uri)
            if path:
                return path
        return workspace.root_path or None

    def unload(self) -> None:
        """Drop the engine and its service before another model loads (documents stay open)."""
        self.engine = self.service = None

    # -- documents -----------------------------------------------------------------------------
    def close_document(self, uri: str) -> None:
        """didClose: cancel the document's jobs and drop everything kept for it."""
        self.worker.forget(uri)
        self.documents.close(uri)
        self.stale.discard(uri)
        self.unparsed.discard(uri)
        self.refused.pop(uri, None)
        if self.service is not None:
            self.service.forget(uri)

    # -- settings ------------------------------------------------------------------------------
    def reread_settings(self) -> list[str]:
        """Merge the layers again (nothing reloads); the warnings."""
        self.settings, warnings = self.store.settings()
        self.status.enabled = self.settings.enable
        if self.settings.enable:
            self.status.snoozed_until = None
        self.documents.max_parse_chars = self.settings.max_parse_kb << 10   # for documents opened from now on
        self.documents.max_chars = _max_chars(self.settings)
        return warnings

    def apply_settings(self) -> None:
        """Merge the layers again and apply what changed."""
        previous = self.settings
        for warning in self.reread_settings():
            log.warning("%s", warning)
        settings = self.settings
        logs.setup(settings.log_level)
        if settings.enable != previous.enable:
            status.send(self)
        config = settings.completion_config()
        if self.service is not None and config != self.service.config:
            try:
                self.service.update_config(config)
            except ValueError as e:   # e.g. a FIM format the model's tokenizer cannot spell
                log.warning("The completion settings were not applied: %s", e)
        if self.initialized:
            self.spawn(ensure_model(self))

    def toggle(self, enabled: bool, minutes: float | None = None) -> None:
        """latent.toggle: completion on or off; off for `minutes` (a snooze), then on by itself."""
        if self._snooze is not None:
            self._snooze.cancel()
            self._snooze = None
        self.store.toggled["enable"] = enabled
        self.status.snoozed_until = time.time() + minutes * 60 if minutes else None
        if minutes:
            self._snooze = asyncio.get_running_loop().call_later(minutes * 60, self._wake)
        self._apply_and_tell()

    def _wake(self) -> None:
        self._snooze = None
        self.store.toggled.pop("enable", None)
        self.status.snoozed_until = None
        self._apply_and_tell()
        log.info("The snooze is over: completion is %s.", "on" if self.settings.enable else "off")

    def _apply_and_tell(self) -> None:
        """Apply the settings and send the status, which the snooze changed even when `enable` did not."""
        was = self.settings.enable
        self.apply_settings()
        if self.settings.enable == was:   # apply_settings sent nothing
            status.send(self)

    # -- running -------------------------------------------------------------------------------
    def spawn(self, coroutine) -> asyncio.Task:
        """Run a coroutine on the event loop, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """The connection ended: stop the worker (queued jobs are answered with None)."""
        self.worker.stop(timeout=1.0)
        self.requests.inflight.clear()
        self.unload()


def _max_chars(settings: Settings) -> int:
    """The characters the open documents may hold in all: four messages of max_message_mb (each
    document arrives whole in one message), so raising that limit raises this one."""
    return settings.max_message_mb << 22
