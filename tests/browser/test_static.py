"""transport/_static.py: which files the HTTP port serves, and how (no browser needed)."""

from __future__ import annotations

import pytest

from transport._static import static_file, static_headers, static_paths


def test_the_page_names_the_websocket_port_it_is_given() -> None:
    found = static_file("/", ws_port=9100)
    assert found is not None
    body, content_type = found
    assert content_type == "text/html; charset=utf-8"
    assert b'<meta name="baton-ws-port" content="9100">' in body
    assert b"{{ws_port}}" not in body
    default = static_file("/index.html")
    assert default is not None and b'content="8765"' in default[0]


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/client/baton.js", "text/javascript; charset=utf-8", b"export class Baton"),
        ("/client/page.js", "text/javascript; charset=utf-8", b'from "/client/baton.js"'),
        ("/client/page.css", "text/css; charset=utf-8", b".seam"),
    ],
)
def test_client_files(path: str, content_type: str, marker: bytes) -> None:
    found = static_file(path)
    assert found is not None
    assert found[1] == content_type
    assert marker in found[0]


@pytest.mark.parametrize(
    "path", ["/client/", "/client/../_static.py", "/client/_http.py", "/baton.js", "/index.htm"]
)
def test_no_other_path_reaches_the_files(path: str) -> None:
    assert static_file(path) is None
    assert path not in static_paths()


def test_headers_revalidate_and_forbid_sniffing() -> None:
    assert dict(static_headers("text/css; charset=utf-8")) == {
        b"content-type": b"text/css; charset=utf-8",
        b"cache-control": b"no-cache",
        b"x-content-type-options": b"nosniff",
    }
