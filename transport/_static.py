"""The browser files Baton serves on its HTTP port: the failover page and ``baton.js``.

``GET /`` is the page (``static/index.html``) and ``/client/<name>`` its script, style and the
``baton.js`` client, read from the installed package with ``importlib.resources`` (no build
step, no CDN). This module only finds files; the HTTP app sends them.

The page must know Baton's WebSocket port, which its own URL does not say: ``index.html``
holds the placeholder ``{{ws_port}}`` in a ``<meta>`` tag, filled from ``ws_port`` here.

Cache headers: ``baton.js`` and the page's files are small and change with Baton's version,
so they are revalidated on every load (``no-cache``) rather than cached stale after an upgrade.
"""

from __future__ import annotations

from importlib import resources

#: The Cache-Control value of every static answer (see the module docstring).
CACHE_CONTROL = "no-cache"
DEFAULT_WS_PORT = 8765

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# URL path -> file in transport/static/. A fixed table: no path from a request reaches the
# file system, so ``/client/../_http.py`` cannot be asked for.
_FILES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/client/baton.js": "baton.js",
    "/client/page.js": "page.js",
    "/client/page.css": "page.css",
}
_PLACEHOLDER = b"{{ws_port}}"


def static_paths() -> frozenset[str]:
    """The URL paths ``static_file`` answers."""
    return frozenset(_FILES)


def static_file(path: str, *, ws_port: int | None = None) -> tuple[bytes, str] | None:
    """The body and Content-Type of the file at URL ``path``; ``None`` if there is none.

    ``ws_port`` is written into the page so it finds the WebSocket (default 8765).
    """
    name = _FILES.get(path)
    if name is None:
        return None
    body = resources.files("transport").joinpath("static", name).read_bytes()
    if name == "index.html":
        body = body.replace(_PLACEHOLDER, str(ws_port or DEFAULT_WS_PORT).encode())
    return body, _TYPES[name[name.rindex(".") :]]


def static_headers(content_type: str) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers of a static file (ASGI form; the sender adds Content-Length)."""
    return (
        (b"content-type", content_type.encode()),
        (b"cache-control", CACHE_CONTROL.encode()),
        (b"x-content-type-options", b"nosniff"),
    )
