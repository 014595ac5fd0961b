"""The Hugging Face Hub at the edges: fail in seconds, with a clear message, when it is out of reach.

huggingface_hub retries connection errors with back-off, which offline can take close to a minute
before an unhelpful traceback. Every Hub call in this package first goes through `require_hub`.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub cannot be used right now (offline mode or no connection)."""


def hub_offline_mode() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _connect(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def require_hub(what: str, *, timeout: float = 3.0) -> None:
    """Raise `HubUnavailableError` naming `what` unless the Hub endpoint accepts a TCP connection.

    Takes at most about `timeout` seconds: the socket timeout does not cover the DNS lookup, which
    can hang for much longer without a network, so the whole probe runs in a daemon thread.
    """
    if hub_offline_mode():
        raise HubUnavailableError(
            f"{what} needs the Hugging Face Hub, but HF_HUB_OFFLINE=1 is set. Use a local folder instead, "
            "or unset HF_HUB_OFFLINE when you are online."
        )
    endpoint = hub_endpoint()
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise HubUnavailableError(f"{what} needs the Hugging Face Hub, but HF_ENDPOINT={endpoint!r} is not an "
                                  "http(s) URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    errors: list[BaseException] = []

    def probe() -> None:
        try:
            _connect(url.hostname, port, timeout)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors.append(err)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive():
        errors.append(TimeoutError(f"no answer within {timeout:.0f} s"))
    if errors:
        err = errors[0]
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
