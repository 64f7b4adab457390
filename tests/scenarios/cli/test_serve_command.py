"""``baton serve`` at the edges an operator meets first: flags, a busy port, its start-up line.

These run the real command in a subprocess (as an operator does), so they use real time,
bounded by subprocess timeouts.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import config_from_dict
from scenarios.cli._serve import add_arguments, with_flags

CONFIG = """\
[server]
http_port = {http}
ws_port = {ws}

[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[routes.default]
targets = [{{ provider = "p", model = "m" }}]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "baton.toml"
    path.write_text(CONFIG.format(http=free_port(), ws=free_port()))
    return path


# What the ``baton`` console script runs.
BATON = [sys.executable, "-c", "import sys; from scenarios.cli import main; sys.exit(main())"]


def baton(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BATON, *args], check=False, capture_output=True, text=True, timeout=timeout
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_listen_flags_override_the_config_file() -> None:
    config = config_from_dict(
        {
            "server": {"host": "127.0.0.1", "http_port": 1111, "ws_port": 2222},
            "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "routes": {"default": {"targets": [{"provider": "p", "model": "m"}]}},
        }
    )
    server = with_flags(config, parse("--http-port", "3333")).server
    assert (server.host, server.http_port, server.ws_port) == ("127.0.0.1", 3333, 2222)
    assert with_flags(config, parse()) == config


@pytest.mark.parametrize(("flag", "key"), [("--http-port", "http_port"), ("--ws-port", "ws_port")])
def test_a_port_in_use_is_one_line_naming_the_port_and_its_setting(
    config_file: Path, busy_port: int, flag: str, key: str
) -> None:
    done = baton("serve", "--config", str(config_file), flag, str(busy_port))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("baton:")]
    expected = (
        f"baton: cannot listen on 127.0.0.1:{busy_port} ([server] {key}): the address is "
        f"already in use. Stop the process using it, or choose another port ({flag} or "
        f"[server] {key})."
    )
    assert errors == [expected]
    assert "Traceback" not in done.stderr


def test_serve_says_where_it_listens_once_and_drains_on_sigint(config_file: Path) -> None:
    process = subprocess.Popen(
        [*BATON, "serve", "--config", str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # bounded: the command ends on SIGINT or the timeout below
        lines.append(line)
        if "Baton listening" in line:
            process.send_signal(signal.SIGINT)
            break
    output, _ = process.communicate(timeout=30)
    lines.extend(output.splitlines())
    assert process.returncode == 0, lines
    assert sum("Baton listening" in line for line in lines) == 1, lines
