"""On real sockets, a WebSocket client that stops reading stops Baton reading its provider.

A simulated OpenAI server answers without end, as fast as it may write; Baton (in this process,
through its httpx adapter) serves the answer to a ``websockets`` client that reads the first
text and then reads nothing more. The simulator counts what it wrote: once the client's backlog,
the sockets' buffers and the client library's queue are full, it writes nothing more, where
without backpressure Baton kept reading (and holding) all it could: 2 MB a second in the
issue's measurement, 0.3 MB a second here, where the simulator, Baton and the client share one
process. The bound shows within a second; the windows leave room for a busy machine.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import trio
from websockets.asyncio.client import connect

from actors import config_from_dict, open_baton
from scenarios import Behaviour, FaultSchedule, open_simulated_provider
from transport import build_providers, serve_ws

FILL = 4.0  # seconds for every buffer on the way to fill (here they fill within a second)
WINDOW = 5.0  # seconds in which a Baton that does not push back reads 1-2 MB more here
MOST_WRITTEN = 16 * 1024 * 1024  # the backlog, socket buffers and client queue (~0.4 MB here)


def written(sim) -> int:
    return sum(len(token) for record in sim.log for token in record.tokens_sent)


@pytest.mark.slow
async def test_a_websocket_client_that_stops_reading_bounds_what_baton_reads_upstream():
    stop = threading.Event()
    stopped_reading = threading.Event()

    async def conversation(url: str) -> None:
        async with connect(url, proxy=None, open_timeout=5, close_timeout=1) as ws:
            messages = [{"role": "user", "content": "Hi"}]
            await ws.send(json.dumps({"type": "start", "model": "default", "messages": messages}))
            while json.loads(await ws.recv())["type"] != "delta":
                pass
            stopped_reading.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    endless = FaultSchedule.always(Behaviour("endless"))
    async with open_simulated_provider(endless) as sim:
        config = config_from_dict({
            "providers": {"sim": {"kind": "openai", "base_url": sim.base_url_openai}},
            "routes": {"default": {"targets": [{"provider": "sim", "model": "m"}]}},
        })  # fmt: skip
        async with open_baton(config, build_providers(config)) as baton, trio.open_nursery() as n:
            port = await n.start(lambda task_status: serve_ws(baton, task_status=task_status))
            url = f"ws://127.0.0.1:{port}/v1/stream"
            n.start_soon(lambda: trio.to_thread.run_sync(lambda: asyncio.run(conversation(url))))
            try:
                with trio.fail_after(10):
                    while not stopped_reading.is_set():
                        await trio.sleep(0.05)
                await trio.sleep(FILL)
                before = written(sim)
                await trio.sleep(WINDOW)
                after = written(sim)
                streams = baton.statistics().active_streams
            finally:
                stop.set()
            n.cancel_scope.cancel()
    # The buffers did fill (the backlog alone is 256 Ki characters), and then nothing more came.
    assert 256 * 1024 < before < MOST_WRITTEN
    assert after - before < 64 * 1024, f"{(after - before) / WINDOW / 1e6:.1f} MB/s still read"
    assert streams == 1  # the stream was still running, waiting for its client
