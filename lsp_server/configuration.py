"""workspace/didChangeConfiguration: the client's settings, the last layer of the merge.

Clients that push settings send them in the notification (a `latent` section or the settings
themselves); clients that only announce a change (`settings: null`) are asked for the
`latent` section with workspace/configuration when they support it.
"""
from __future__ import annotations

import asyncio
import logging

from lsprotocol import types

from lsp_server.config import client_layer

log = logging.getLogger(__name__)


def register(server) -> None:
    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls, params: types.DidChangeConfigurationParams) -> None:
        if params.settings in (None, {}) and _can_pull(ls):
            ls.spawn(pull(ls))
            return
        apply_client_settings(ls, params.settings)


def apply_client_settings(ls, settings) -> None:
    layer, warnings = client_layer(settings)
    for warning in warnings:
        log.warning("%s", warning)
    ls.store.client = layer
    if "enable" in layer:  # an explicit setting overrides an earlier latent.toggle
        ls.store.runtime.pop("enable", None)
    ls.apply_settings()


async def pull(ls) -> None:
    try:
        answer = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
            items=[types.ConfigurationItem(section="latent")])), 10)
    except Exception as e:
        log.warning("The client did not send its settings (%s).", e)
        return
    apply_client_settings(ls, answer[0] if answer else None)


def _can_pull(ls) -> bool:
    workspace = getattr(ls.client_capabilities, "workspace", None)
    return bool(workspace and workspace.configuration)
