"""workspace/didChangeConfiguration: the client's settings, a late layer of the merge.

Clients that push settings send them in the notification (a `latent` section or the settings
themselves); clients that only announce a change (`settings: null`) are asked for the
`latent` section with workspace/configuration when they support it.
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
        apply_client_settings(session, params.settings)


def apply_client_settings(session, settings) -> None:
    layer, warnings = client_layer(settings)
    for warning in warnings:
        log.warning("%s", warning)
    session.store.client = layer
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
    apply_client_settings(session, answer[0] if answer else None)


def _can_pull(server) -> bool:
    workspace = getattr(server.client_capabilities, "workspace", None)
    return bool(workspace and workspace.configuration)
