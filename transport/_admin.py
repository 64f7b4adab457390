"""The operator endpoints' key: ``/status`` and ``/metrics`` behind ``[server] admin_key_env``.

With ``admin_key_env`` set, those endpoints answer only a request carrying
``Authorization: Bearer <key>`` (what Prometheus sends with ``authorization.credentials``);
any other gets 401 with an OpenAI-shaped body and ``WWW-Authenticate: Bearer``. ``/healthz`` and
``/readyz`` stay open for load balancers. The key is read from the environment once, at start-up,
compared in constant time, and never written to a log, an error or a metric.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from actors import ConfigError, ServerConfig

log = logging.getLogger(__name__)

_UNAUTHORIZED = (
    "/status and /metrics need the operator key: send it as 'Authorization: Bearer <key>' "
    "(the key is in the environment variable named by [server] admin_key_env)."
)
_CHALLENGE = ((b"www-authenticate", b'Bearer realm="baton-admin"'),)


class ErrorSender(Protocol):
    """What the guard needs of the HTTP API's responder: an OpenAI-shaped error."""

    async def error(
        self, status: int, code: str, message: str, param: str | None = None, *, headers: Any = ()
    ) -> None: ...


Handler = Callable[[Any, Any, Any], Awaitable[None]]


def admin_key(
    server: ServerConfig, *, environ: Mapping[str, str] = os.environ, where: str = ""
) -> bytes | None:
    """The operator key named by ``admin_key_env`` (None when it is not configured).

    Raises ``ConfigError`` naming the key when the variable is unset or empty: an operator who
    asked for a key must not get open endpoints by a typo. ``where`` prefixes the key (the file).
    """
    if server.admin_key_env is None:
        return None
    value = environ.get(server.admin_key_env, "")
    if not value:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}server.admin_key_env",
            f"names the environment variable {server.admin_key_env!r}, which is unset or empty; "
            "export the operator key in it before starting Baton",
        )
    return value.encode()


def bearer_matches(key: bytes, headers: Any) -> bool:
    """Whether the ASGI ``headers`` carry ``Authorization: Bearer <key>`` (constant time)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(token.strip(), key)
            return False
    return False


def admin_only(server: ServerConfig, handler: Handler) -> Handler:
    """``handler`` (an HTTP API handler) behind the operator key of ``server``.

    Without ``admin_key_env`` it is ``handler`` itself; with it, a request without the key gets
    401 ``invalid_api_key``. Reads the key now (``admin_key``), so it raises ``ConfigError``
    as that does.
    """
    key = admin_key(server)
    if key is None:
        return handler

    async def guarded(scope: Any, receive: Any, send: ErrorSender) -> None:
        if bearer_matches(key, scope["headers"]):
            await handler(scope, receive, send)
            return
        log.info("HTTP GET %s refused: no valid operator key", scope["path"])
        await send.error(401, "invalid_api_key", _UNAUTHORIZED, headers=_CHALLENGE)

    return guarded
