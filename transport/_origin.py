"""What a browser may send: the Origin allow-list, CORS answers and the JSON body rule.

A web page open in a user's browser can open a WebSocket to any address and fire simple
cross-site requests (``text/plain`` or form bodies, no preflight) at any HTTP server: without a
check, any site could drive a Baton on localhost or the office network. So:

- a request without ``Origin`` (curl, SDKs, servers) is allowed;
- a request whose ``Origin`` is listed in ``server.allowed_origins``, or is Baton's own HTTP
  origin (``http://<host>:<http_port>``, the page it serves), is allowed, and its HTTP answers
  carry ``Access-Control-Allow-Origin``;
- any other ``Origin`` is refused with 403 before any work;
- ``POST /v1/chat/completions`` requires ``Content-Type: application/json``, which a browser
  cannot send cross-site without a CORS preflight that Baton answers only for listed origins.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from actors import ServerConfig, clip

from ._openai_codec import APIError

log = logging.getLogger(__name__)

Headers = tuple[tuple[bytes, bytes], ...]

ORIGIN_REFUSED = (
    "Requests from this web page's origin are not allowed; add it to server.allowed_origins "
    "in Baton's config (scheme://host[:port]) if its pages should use Baton."
)
#: The 403 body of a refused WebSocket handshake, OpenAI-shaped like the HTTP API's errors.
ORIGIN_REFUSED_BODY = orjson.dumps(
    {
        "error": {
            "message": ORIGIN_REFUSED,
            "type": "invalid_request_error",
            "param": None,
            "code": "origin_not_allowed",
        }
    }
)
_ALLOW_METHODS = b"GET, POST, OPTIONS"
_BASE_HEADERS = ("authorization", "content-type")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PREFLIGHT_MAX_AGE = b"600"
_VARY = (b"vary", b"Origin")
# The answer headers a page on an allowed origin may read: the request id, and the stream id
# it needs to resume a streamed answer after a dropped connection (GET /v1/streams/{id}).
_EXPOSED = b"x-request-id, x-baton-stream"
_SCHEMES = ("http", "https")


class OriginPolicy:
    """Decides whether a request's ``Origin`` may use Baton, and the CORS headers it gets."""

    def __init__(self, server: ServerConfig) -> None:
        # Whichever scheme the HTTP port speaks, no other page can have Baton's host and port.
        own = {f"{scheme}://{server.host}:{server.http_port}".lower() for scheme in _SCHEMES}
        self._allowed = frozenset(server.allowed_origins) | own

    def __repr__(self) -> str:
        return f"<OriginPolicy allowed={sorted(self._allowed)}>"

    def allows(self, origin: str | None, *, same_origin: str | None = None) -> bool:
        """Whether a request with this ``Origin`` header (None: no header) is allowed.

        ``same_origin``: the origin the request itself was sent to (scheme and Host), which a
        page Baton served may always use.
        """
        if origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        return origin in self._allowed or (same_origin is not None and origin == same_origin)

    def http_headers(self, scope: MutableMapping[str, Any]) -> Headers | None:
        """The CORS headers every answer to this HTTP request carries; None: refuse it (403)."""
        origin = header(scope["headers"], b"origin")
        host = header(scope["headers"], b"host")
        same = f"{scope.get('scheme', 'http')}://{host}".lower() if host else None
        if not self.allows(origin, same_origin=same):
            log.info("HTTP %s %s: refused origin %s", scope["method"], clip(scope["path"]),
                     clip(origin))  # fmt: skip
            return None
        if origin is None:
            return ()
        return ((b"access-control-allow-origin", origin.encode()), _VARY,
                (b"access-control-expose-headers", _EXPOSED))  # fmt: skip


def preflight_headers(scope: MutableMapping[str, Any]) -> Headers:
    """The headers of an allowed origin's CORS preflight (``OPTIONS``) answer, besides CORS'."""
    asked = header(scope["headers"], b"access-control-request-headers") or ""
    names = [n.strip().lower() for n in asked.split(",") if _HEADER_NAME.match(n.strip())]
    allowed = ", ".join(dict.fromkeys([*_BASE_HEADERS, *names]))
    return (
        (b"access-control-allow-methods", _ALLOW_METHODS),
        (b"access-control-allow-headers", allowed.encode()),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
    )


def require_json(scope: MutableMapping[str, Any]) -> None:
    """Raise ``APIError`` 415 unless the request says its body is ``application/json``."""
    value = header(scope["headers"], b"content-type") or ""
    if value.split(";", 1)[0].strip().lower() != "application/json":
        raise APIError(
            415, "unsupported_media_type",
            f"The request body must be JSON sent with Content-Type: application/json, not "
            f"{clip(value) if value else 'no Content-Type'}.",
        )  # fmt: skip


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
