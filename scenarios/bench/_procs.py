"""The benchmark's processes: starting the mock and Baton, and reading their CPU and memory.

``open_child`` starts a helper process (``python -m scenarios.bench._mock`` or
``python -m scenarios.bench._proxy``), reads the JSON line it prints once it listens, and on the
way out closes its stdin (its signal to stop), waits briefly, then kills it: a child never
outlives the benchmark. ``ProcessMeter`` reads a process's CPU seconds and resident memory
from ``/proc`` (Linux only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import IO, Any

import attrs
import trio

STARTUP_TIMEOUT = 30.0  # seconds a child may take to import and start listening
STOP_TIMEOUT = 5.0  # seconds a child may take to stop after its stdin closed
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@attrs.frozen(kw_only=True)
class Child:
    """A running helper process and what it reported when it started listening."""

    pid: int
    info: dict[str, Any]


@asynccontextmanager
async def open_child(
    module: str, args: Sequence[str], *, stderr: IO[bytes]
) -> AsyncIterator[Child]:
    """Run ``python -m module *args`` until the block ends; yields once it reported its ports.

    Raises ``RuntimeError`` with the child's last stderr lines when it exits or stays silent
    for ``STARTUP_TIMEOUT`` seconds instead of printing its JSON line.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        line = b""
        with trio.move_on_after(STARTUP_TIMEOUT):
            while not line.endswith(b"\n"):
                piece = await process.stdout.receive_some(4096)
                if not piece:
                    break
                line += piece
        if not line.endswith(b"\n"):
            raise RuntimeError(f"{module} did not start:\n{_tail(stderr)}")
        async with trio.open_nursery() as nursery:
            # Drain anything else it prints so that a full pipe can never block it.
            nursery.start_soon(_drain, process.stdout)
            yield Child(pid=process.pid, info=json.loads(line))
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(STOP_TIMEOUT + 1, shield=True):
            await process.stdin.aclose()
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


def _tail(stderr: IO[bytes], lines: int = 20) -> str:
    try:
        stderr.flush()
        with open(stderr.name, "rb") as file:
            return b"\n".join(file.read().splitlines()[-lines:]).decode(errors="replace")
    except (OSError, AttributeError):
        return "(no stderr)"


@attrs.frozen(kw_only=True)
class Usage:
    """A process's CPU seconds (user + system) and memory (bytes) at one moment."""

    cpu: float
    rss: int
    peak_rss: int  # VmHWM: the high-water mark since start or since the last reset


class ProcessMeter:
    """Reads one process's CPU time and memory from ``/proc`` (Linux only)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def usage(self) -> Usage:
        """The process's usage now; raises ``OSError`` if it is gone."""
        with open(f"/proc/{self.pid}/stat", "rb") as file:
            stat = file.read()
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        rss = peak = 0
        with open(f"/proc/{self.pid}/status", "rb") as file:
            for line in file:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return Usage(cpu=cpu, rss=rss, peak_rss=peak)

    def reset_peak(self) -> bool:
        """Reset the process's VmHWM to its current RSS; false where the kernel does not let us."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as file:
                file.write("5")
        except OSError:
            return False
        return True


def own_cpu() -> float:
    """CPU seconds (user + system) of this process so far: the load generator's cost."""
    times = os.times()
    return times.user + times.system


def system_busy() -> float:
    """CPU seconds all cores of the machine spent busy so far (``/proc/stat``; 0 if unreadable).

    Minus what the benchmark's own processes used, it shows other load on the machine.
    """
    try:
        with open("/proc/stat", "rb") as file:
            fields = file.readline().split()
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    ticks = [int(value) for value in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def listen_overflows() -> int:
    """How often any listening socket's accept queue overflowed so far (``/proc/net/netstat``).

    A growing count means a server did not accept connections as fast as they came (each
    overflow drops a handshake, which the client retries a second or more later).
    """
    try:
        with open("/proc/net/netstat") as file:
            lines = file.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split(), values.split(), strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def proc_available() -> bool:
    """Whether ``/proc`` has what ``ProcessMeter`` reads (Linux)."""
    return os.path.exists(f"/proc/{os.getpid()}/stat") and os.path.exists(
        f"/proc/{os.getpid()}/status"
    )
