"""The Hugging Face Hub at the edges: fail in seconds, with a clear message, when it is out of reach.

huggingface_hub retries connection errors with back-off, which offline can take close to a minute
before an unhelpful traceback. Every Hub call in this package first goes through `require_hub`.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub cannot be used right now (offline mode or no connection)."""


def hub_offline_mode() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def require_hub(what: str, *, timeout: float = 3.0) -> None:
    """Raise `HubUnavailableError` naming `what` unless the Hub endpoint accepts a TCP connection."""
    if hub_offline_mode():
        raise HubUnavailableError(
            f"{what} needs the Hugging Face Hub, but HF_HUB_OFFLINE=1 is set. Use a local folder instead, "
            "or unset HF_HUB_OFFLINE when you are online."
        )
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise HubUnavailableError(
            f"{what} needs the Hugging Face Hub, but {url.hostname}:{port} is unreachable ({err}). "
            "Check the network, or use a local folder / cached copy (set HF_HUB_OFFLINE=1 to use the cache)."
        ) from err


def looks_like_hub_id(name: str) -> bool:
    """'owner/name' (optionally prefixed with 'hf-hub:') and not an existing local path."""
    name = name.removeprefix("hf-hub:")
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts)
