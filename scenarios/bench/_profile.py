"""Profiling Baton under load with py-spy, and reading the profile as a list of hot spots.

``profile_proxy`` samples the Baton process with ``py-spy record`` (collapsed "raw" stacks, one
function per frame) while the benchmark drives a workload; ``hot_spots`` reads such a file and
says, for each of Baton's own functions, which share of the busy samples it is responsible for.
py-spy must be installed (``pip install py-spy``) and allowed to attach (root or
``CAP_SYS_PTRACE``, or a lenient ``kernel.yama.ptrace_scope``).
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import attrs
import trio

from ._clients import StreamResult

_ATTACH_TIME = 0.7  # seconds py-spy takes to attach before the load starts
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_BATON_FILE = re.compile(
    r"(?:^|/)((?:actors|transport|scenarios)/(?:policy/|providers/)?[^/]+\.py)$"
)
# The benchmark's own helpers (the process runner, the mock) are not Baton: time under them
# alone is the event loop's.
_NOT_BATON = re.compile(r"scenarios/_(?:bench\w*|mock)\.py$")


async def profile_proxy(
    pid: int,
    run: Callable[..., Awaitable[StreamResult]],
    load: Callable[..., Awaitable[list[StreamResult]]],
    output: Path,
    *,
    seconds: float,
    rate: int = 200,
) -> Path:
    """Record ``pid`` with py-spy for ``seconds`` while ``load(run)`` runs; returns the raw stacks.

    Raises ``RuntimeError`` if py-spy is missing or cannot attach.
    """
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed; pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    raw = output.with_suffix(".txt")
    command = [
        spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--function", "--format", "raw", "--output", str(raw),
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                trio.run_process, command, capture_stdout=True, capture_stderr=True, check=False
            )
        )
        await trio.sleep(_ATTACH_TIME)
        await load(run)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile to {raw} (is attaching allowed?)")
    return raw


@attrs.frozen(kw_only=True)
class HotSpot:
    """One function's share of the busy samples."""

    where: str  # "file.py:function"
    own: float  # samples whose innermost Baton frame is this function, with the library code
    #             it calls (httpx, h11, orjson, trio...): the cost this line of Baton causes
    self_: float  # samples spent in this function's own bytecode
    inclusive: float  # samples with this function anywhere on the stack


@attrs.frozen(kw_only=True)
class Profile:
    """A profile read back: totals, Baton's hot spots, and the hottest leaf functions overall."""

    samples: int
    outside_baton: float  # share of samples with no Baton frame (event loop, servers' own tasks)
    baton: tuple[HotSpot, ...]
    leaves: tuple[tuple[str, float], ...]  # the innermost frame of every sample, any code
    packages: tuple[tuple[str, float], ...]  # the package of every sample's innermost frame


def hot_spots(raw: Path, *, top: int = 10) -> Profile:
    """Read a py-spy raw (collapsed) profile into Baton's ``top`` hot spots."""
    own: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = outside = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_name(frame) for frame in stack.split(";")]
        leaves[frames[-1][0]] += count
        packages[_package(frames[-1][0])] += count
        if frames[-1][1]:
            self_[frames[-1][0]] += count
        baton = [name for name, is_baton in frames if is_baton]
        if not baton:
            outside += count
            continue
        own[baton[-1]] += count
        for name in set(baton):
            inclusive[name] += count
    if total == 0:
        return Profile(samples=0, outside_baton=0.0, baton=(), leaves=(), packages=())
    spots = tuple(
        HotSpot(
            where=name, own=n / total, self_=self_[name] / total, inclusive=inclusive[name] / total
        )
        for name, n in own.most_common(top)
    )
    return Profile(
        samples=total, outside_baton=outside / total, baton=spots,
        leaves=tuple((name, n / total) for name, n in leaves.most_common(top)),
        packages=tuple((name, n / total) for name, n in packages.most_common()),
    )  # fmt: skip


def _package(where: str) -> str:
    """The top-level package of a frame's ``path:function`` (``stdlib`` for a bare module)."""
    path = where.rsplit(":", 1)[0]
    return path.split("/", 1)[0] if "/" in path else "stdlib"


def _name(frame: str) -> tuple[str, bool]:
    """``("file.py:function", is_baton)`` for one py-spy frame ``function (path:line)``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, False
    path = match["file"]
    baton = _BATON_FILE.search(path)
    if baton is not None and "site-packages" not in path and not _NOT_BATON.search(path):
        return f"{baton[1]}:{match['function']}", True
    return f"{path}:{match['function']}", False


def format_profile(profile: Profile, label: str) -> str:
    """The hot spots as a short table."""
    lines = [
        (
            f"Hot spots in Baton's code, {label} ({profile.samples} busy samples; "
            f"{profile.outside_baton:.0%} had no Baton frame: event loop, server libraries' "
            "own tasks)"
        ),
        f"  {'own':>6} {'self':>6} {'incl':>6}  function",
    ]
    for spot in profile.baton:
        lines.append(f"  {spot.own:>6.1%} {spot.self_:>6.1%} {spot.inclusive:>6.1%}  {spot.where}")
    lines += [
        "  own: samples whose innermost Baton frame it is (with the library code it calls);",
        (
            "  self: in its own bytecode; incl: anywhere on the stack. "
            "Hottest leaf functions, any code:"
        ),
    ]
    for name, share in profile.leaves:
        lines.append(f"  {share:>6.1%}  {name}")
    shares = ", ".join(f"{name} {share:.0%}" for name, share in profile.packages if share >= 0.005)
    lines.append(f"  busy samples by the package of their innermost frame: {shares}")
    return "\n".join(lines)


def py_spy_available() -> bool:
    """Whether ``py-spy`` is on the PATH."""
    return shutil.which("py-spy") is not None
