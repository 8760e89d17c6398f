"""Can this process download weights? Asked once per host, answered in seconds, said once.

:func:`offline_reason` answers before any download is tried: the environment forbids downloads
(``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``HARNESS_OFFLINE``), or a TCP connect to the
host (the HTTPS proxy when one is configured) fails within :data:`PROBE_TIMEOUT_S`. The answer
is memoised for the process. A host found unreachable, or a download that failed with a
connection error (:func:`note_failure`), stays unreachable; when it is the Hugging Face hub,
huggingface_hub's own offline mode is switched on too, so no library behind the harness
(transformers, timm, open_clip) retries it for the rest of the process.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HARNESS_OFFLINE")
PROBE_TIMEOUT_S = 2.0  # TCP connect (and name lookup) budget of the one probe per host
_TRUE = ("1", "true", "yes", "on")
_known: dict[tuple[str, int], str | None] = {}  # (host, port) -> None (reachable) or why not


def forced_offline() -> str | None:
    """``"HF_HUB_OFFLINE=1 is set"`` (the first such variable set), else None."""
    for var in OFFLINE_VARS:
        value = os.environ.get(var, "").strip()
        if value.lower() in _TRUE:
            return f"{var}={value} is set"
    return None


def hub_url() -> str:
    """The Hugging Face endpoint (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_reason(url: str | None = None) -> str | None:
    """Why nothing can be downloaded from ``url`` (default: the HF hub), or None if it can.

    E.g. ``"no network: cannot reach huggingface.co:443 ([Errno -2] Name or service not
    known)"`` or ``"downloads are disabled here: HF_HUB_OFFLINE=1 is set"``.
    """
    forced = forced_offline()
    if forced:
        return f"downloads are disabled here: {forced}"
    target = _connect_target(url or hub_url())
    if target not in _known:
        _known[target] = _probe(*target)
        if _known[target] is not None and _is_hub(target):
            _hub_offline()
    why = _known[target]
    return None if why is None else f"no network: cannot reach {target[0]}:{target[1]} ({why})"


def note_failure(url: str, exc: BaseException) -> str | None:
    """Record that a download from ``url`` failed; returns the offline reason when ``exc`` is a
    connection failure (the host then counts as unreachable), else None."""
    if not is_connection_error(exc):
        return None
    target = _connect_target(url)
    _known[target] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if _is_hub(target):
        _hub_offline()
    return offline_reason(url)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a network failure."""
    transport_errors = _http_transport_errors()
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, socket.gaierror, TimeoutError, *transport_errors)):
            return True
        if isinstance(seen, urllib.error.URLError) and isinstance(seen.reason, OSError):
            return True  # urllib (torch.hub downloads) wraps the socket error in .reason
        seen = seen.__cause__ or seen.__context__
    return False


def _http_transport_errors() -> tuple[type[BaseException], ...]:
    """The transport-error class of huggingface_hub's HTTP client (httpx2 from hub 2.x, httpx
    before it; requests' errors are ConnectionError subclasses already)."""
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return (module.TransportError,)
    return ()


def _connect_target(url: str) -> tuple[str, int]:
    """(host, port) a download from ``url`` connects to first: its HTTPS proxy, if any."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host = parsed.hostname or host
    default = 443 if parsed.scheme == "https" else 80
    return host, parsed.port or default


def _probe(host: str, port: int) -> str | None:
    """None when a TCP connection opens within the budget, else why not (the name lookup has
    no timeout of its own, so the probe runs in a daemon thread that is abandoned if late)."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=attempt, name=f"probe {host}", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return outcome[0] if outcome else f"no answer within {PROBE_TIMEOUT_S:g} s"


def _is_hub(target: tuple[str, int]) -> bool:
    return target == _connect_target(hub_url())


def _hub_offline() -> None:
    """huggingface_hub's offline mode for the rest of this process (no requests, no retries)."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
