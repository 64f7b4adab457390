"""The operator endpoints' key: ``/status`` and ``/metrics`` behind ``[server] admin_key_env``.

With ``admin_key_env`` set, those endpoints answer only a request carrying
``Authorization: Bearer <key>`` (what Prometheus sends with ``authorization.credentials``);
any other gets 401 with an OpenAI-shaped body and ``WWW-Authenticate: Bearer``. ``/healthz`` and
``/readyz`` stay open for load balancers. The key is read from the environment once, at start-up,
compared in constant time, and never written to a log, an error or a metric.

With ``admin_port`` the four are served on a listener of their own (``operator_app``), and the
HTTP API's port answers ``/status`` and ``/metrics`` 404.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from actors import ConfigError, ServerConfig

from ._openai_codec import error_body

log = logging.getLogger(__name__)

_UNAUTHORIZED = (
    "/status and /metrics need the operator key: send it as 'Authorization: Bearer <key>' "
    "(the key is in the environment variable named by [server] admin_key_env)."
)
_CHALLENGE = ((b"www-authenticate", b'Bearer realm="baton-admin"'),)
_ELSEWHERE = "{path} is served on the operator listener ([server] admin_port), not here."
_OPERATOR_ONLY = "The operator listener serves only /status, /metrics, /healthz and /readyz."
# The paths the operator listener serves; the ASGI scope key that says a request came in there.
OPERATOR_PATHS = frozenset({"/status", "/metrics", "/healthz", "/readyz"})
OPERATOR_SCOPE_KEY = "baton.operator"


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

    Without ``admin_key_env`` and ``admin_port`` it is ``handler`` itself. With the key, a
    request without it gets 401 ``invalid_api_key``; with ``admin_port``, a request that did
    not come through ``operator_app`` gets 404. Reads the key now (``admin_key``), so it raises
    ``ConfigError`` as that does.
    """
    key = admin_key(server)
    separate = server.admin_port is not None
    if key is None and not separate:
        return handler

    async def guarded(scope: Any, receive: Any, send: ErrorSender) -> None:
        if separate and not scope.get(OPERATOR_SCOPE_KEY):
            await send.error(404, "not_found", _ELSEWHERE.format(path=scope["path"]))
            return
        if key is not None and not bearer_matches(key, scope["headers"]):
            log.info("HTTP GET %s refused: no valid operator key", scope["path"])
            await send.error(401, "invalid_api_key", _UNAUTHORIZED, headers=_CHALLENGE)
            return
        await handler(scope, receive, send)

    return guarded


def operator_app(app: Any) -> Any:
    """The ASGI application of the operator listener (``admin_port``) over the HTTP API ``app``.

    It serves ``OPERATOR_PATHS`` through ``app`` (marking the scope, so ``admin_only`` lets
    ``/status`` and ``/metrics`` through) and answers every other path 404.
    """

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope["path"] not in OPERATOR_PATHS:
                body = error_body(404, "not_found", _OPERATOR_ONLY)
                headers = [(b"content-type", b"application/json"),
                           (b"content-length", str(len(body)).encode())]  # fmt: skip
                await send({"type": "http.response.start", "status": 404, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            scope = {**scope, OPERATOR_SCOPE_KEY: True}
        await app(scope, receive, send)

    return serve
