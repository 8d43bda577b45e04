"""workspace/didChangeConfiguration: the client's settings, a late layer of the merge.

Clients that push settings send them in the notification (a `latent` section or the settings
themselves); clients that only announce a change (`settings: null`) are asked for the
`latent` section with workspace/configuration when they support it.

Either may carry a workspace's settings (a cloned repository's), so neither sets USER_ONLY
settings (settings.py: where code goes, what runs, the server's limits and the engine's sizes):
those that differ from the user's are ignored, in one logged sentence.
The settings received replace the initializationOptions' (SettingsStore.set_client): a setting
the client no longer sends returns to its value from the lower layers. The user's config file
is read again too: editing it, then any settings change, applies it without a restart.
"""
from __future__ import annotations

import asyncio
import logging

from lsprotocol import types

from lsp_server.settings import client_layer

log = logging.getLogger(__name__)


def register(server, session) -> None:
    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(params: types.DidChangeConfigurationParams) -> None:
        if params.settings in (None, {}) and _can_pull(server):
            session.spawn(pull(server, session))
            return
        apply_client_settings(session, params.settings, "workspace/didChangeConfiguration")


def apply_client_settings(session, settings, source: str) -> None:
    layer, warnings = client_layer(settings)
    for warning in warnings + session.store.reread_file():
        log.warning("%s", warning)
    refused = session.store.set_client(layer)
    if refused:
        log.warning("The %s settings %s were ignored: where code goes, what runs and how large the engine grows "
                    "are read only from the user's own configuration (the config file, LATENT_* variables, the "
                    "command line or the editor's user settings).", source, ", ".join(refused))
    if "enable" in layer:  # an explicit setting overrides an earlier latent.toggle
        session.store.toggled.pop("enable", None)
    session.apply_settings()


async def pull(server, session) -> None:
    try:
        answer = await asyncio.wait_for(server.workspace_configuration_async(types.ConfigurationParams(
            items=[types.ConfigurationItem(section="latent")])), 10)
    except Exception as e:
        log.warning("The client did not send its settings (%s).", e)
        return
    apply_client_settings(session, answer[0] if answer else None, "workspace/configuration")


def _can_pull(server) -> bool:
    workspace = getattr(server.client_capabilities, "workspace", None)
    return bool(workspace and workspace.configuration)
