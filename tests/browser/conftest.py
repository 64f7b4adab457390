"""Browser tests: Debian's chromium driven by playwright's sync API against a real Baton.

Chromium is the system one (``shutil.which("chromium")``; ``.ci/run`` installs it), launched
through ``executable_path``: playwright's own browser download is not used. Without chromium
the tests skip with one line, except in CI (``CI`` set), where a missing browser must fail.

Baton runs as a subprocess (``tests/browser/_launch.py``: ``baton serve``'s embedded default
on free ports), not in a thread of this process: playwright's sync API runs its own asyncio
loop in this process, a subprocess cannot share a loop, a signal handler or a logging setup
with it, it is killed for sure at the end (bounded waits), and its log, which the tests read
to see what the server saw (a cancel, a finished stream's outcome), is a file. A thread
copies that log from the process's pipe as it comes and wakes whoever waits for a line: no
test sleeps to poll it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest

from transport._static import static_file, static_headers

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0  # seconds for Baton to listen
STOP_TIMEOUT = 10.0


def artifacts_dir() -> Path:
    """Where screenshots go: $BATON_ARTIFACTS, else tests/browser/artifacts (gitignored)."""
    path = Path(os.environ.get("BATON_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    path = _chromium()
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium's sandbox refuses root
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=args, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(15_000)  # every wait of a test is bounded
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    try:
        yield page
    finally:
        context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class BatonProcess:
    """A running ``baton serve`` (embedded default) and its log, as it comes."""

    process: subprocess.Popen[bytes]
    ws_port: int
    http_port: int
    log_path: Path
    _lines: list[str] = attrs.field(factory=list)
    _arrived: threading.Condition = attrs.field(factory=threading.Condition)
    _ended: bool = False

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/v1/stream"

    def log(self) -> str:
        with self._arrived:
            return "".join(self._lines)

    def follow(self) -> None:
        """Copy the process's output to ``log_path`` line by line, waking ``wait_log``."""
        assert self.process.stdout is not None
        with self.log_path.open("w") as copy:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace")
                copy.write(line)
                copy.flush()
                with self._arrived:
                    self._lines.append(line)
                    self._arrived.notify_all()
        with self._arrived:
            self._ended = True
            self._arrived.notify_all()

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, waiting up to ``timeout`` seconds."""
        found: re.Match[str] | None = None

        def seen() -> bool:
            nonlocal found
            found = re.search(pattern, "".join(self._lines))
            return found is not None or self._ended

        with self._arrived:
            self._arrived.wait_for(seen, timeout)
        if found is None:
            raise AssertionError(f"{pattern!r} not in Baton's log:\n{self.log()[-3000:]}")
        return found


def start_baton(
    tmp_path: Path, token_delay: float, first_reset_at: int | None = None
) -> BatonProcess:
    ws_port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "tests.browser._launch"]
    command += ["--ws-port", str(ws_port), "--http-port", str(http_port)]
    command += ["--token-delay", str(token_delay)]
    if first_reset_at is not None:
        command += ["--first-reset-at", str(first_reset_at)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    baton = BatonProcess(process, ws_port, http_port, tmp_path / "baton.log")
    threading.Thread(target=baton.follow, daemon=True).start()
    try:
        # Both servers say when they listen; then Baton must be ready at once.
        baton.wait_log(r"HTTP API listening", START_TIMEOUT)
        baton.wait_log(r"WebSocket server listening", START_TIMEOUT)
        with urllib.request.urlopen(baton.http + "/readyz", timeout=5) as answer:
            assert answer.status == 200
    except (AssertionError, OSError) as exc:
        stop_baton(baton)
        raise AssertionError(f"Baton did not start ({exc}):\n{baton.log()[-3000:]}") from None
    return baton


def stop_baton(baton: BatonProcess) -> None:
    baton.process.terminate()
    try:
        baton.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        baton.process.kill()
        baton.process.wait(STOP_TIMEOUT)


@pytest.fixture
def baton(tmp_path: Path) -> Iterator[BatonProcess]:
    """Baton with simulated providers that take 30 ms a token (a ~3 s answer)."""
    running = start_baton(tmp_path, token_delay=0.03)
    try:
        yield running
    finally:
        stop_baton(running)


@pytest.fixture
def failing_baton(tmp_path: Path) -> Iterator[BatonProcess]:
    """As ``baton``, but sim-openai's first answer is cut by a TCP reset after 30 tokens."""
    running = start_baton(tmp_path, token_delay=0.03, first_reset_at=30)
    try:
        yield running
    finally:
        stop_baton(running)


class _StaticHandler(BaseHTTPRequestHandler):
    ws_port = 0

    def do_GET(self) -> None:
        found = static_file(self.path.split("?")[0], ws_port=self.ws_port)
        if found is None:
            self.send_error(404)
            return
        body, content_type = found
        self.send_response(200)
        for name, value in static_headers(content_type):
            self.send_header(name.decode(), value.decode())
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(baton: BatonProcess) -> Iterator[str]:
    """The same page served from a second origin, one Baton does not allow."""
    handler = type("Handler", (_StaticHandler,), {"ws_port": baton.ws_port})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)
