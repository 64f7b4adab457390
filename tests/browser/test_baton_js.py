"""baton.js in Chromium: against a real Baton, and fed frames by a fake WebSocket in the page."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import connect

from .conftest import BatonProcess, artifacts_dir

QUESTION = [{"role": "user", "content": "Tell me about relay races."}]

# Streams one answer with baton.js inside the page; returns its events. With `abortAfter`,
# aborts the signal after that many deltas and returns the error's name too.
STREAM_JS = """
async ({url, messages, abortAfter}) => {
  const { Baton } = await import("/client/baton.js");
  const baton = new Baton(url);
  const controller = new AbortController();
  const events = [];
  let deltas = 0;
  try {
    for await (const ev of baton.stream({model: "default", messages, signal: controller.signal})) {
      events.push(ev);
      if (ev.type === "delta" && ++deltas === abortAfter) controller.abort();
    }
  } catch (err) {
    return {events, error: err.name};
  }
  return {events, error: null};
}
"""


def reference_text(baton: BatonProcess) -> str:
    """The answer to QUESTION as Baton's WebSocket gives it to the `websockets` client.

    Its sync client: playwright's sync API already runs an asyncio loop in this thread.
    """
    with connect(baton.ws, open_timeout=10) as ws:
        start = {"type": "start", "ref": "ref", "model": "default", "messages": QUESTION}
        ws.send(json.dumps(start))
        text = ""
        while True:
            event = json.loads(ws.recv(timeout=20))
            if event["type"] == "delta":
                text += event["text"]
            if event["type"] in ("done", "error"):
                assert event["type"] == "done", event
                return text


def test_baton_js_streams_an_answer_from_baton(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    result = page.evaluate(STREAM_JS, {"url": baton.ws, "messages": QUESTION, "abortAfter": 0})
    events = result["events"]
    assert result["error"] is None
    assert [e["seq"] for e in events] == list(range(len(events)))  # gapless, each once
    assert events[0]["type"] == "started" and events[0]["provider"] == "sim-openai"
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    assert {e["type"] for e in events[1:-1]} == {"delta"}
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert len(text) > 100
    assert text == reference_text(baton)
    assert page.errors == []


def test_abort_signal_cancels_the_stream_on_the_server(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    result = page.evaluate(STREAM_JS, {"url": baton.ws, "messages": QUESTION, "abortAfter": 3})
    assert result["error"] == "AbortError"
    events = result["events"]
    assert [e["type"] for e in events] == ["started", "delta", "delta", "delta"]
    stream = events[0]["stream"]
    # The server got the cancel frame for this stream and ended it upstream as cancelled,
    # long before the ~3 s answer could have finished on its own.
    baton.wait_log(rf"client cancels stream {stream}\b")
    ended = baton.wait_log(rf"stream {stream[:8]}\S* finished: .*outcome=(\w+).*deltas=(\d+)")
    assert ended.group(1) == "cancelled"
    assert int(ended.group(2)) < 50


# A fake WebSocket inside the page: the test plays the server. Each instance records what the
# client sent; `window.sockets` holds them all, so a test can drop one and see the reconnect.
FAKE_JS = """
async () => {
  const { Baton } = await import("/client/baton.js");
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url; this.protocols = protocols; this.sent = [];
      window.sockets.push(this);
      setTimeout(() => this.onopen?.({}), 0);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code) { setTimeout(() => this.onclose?.({code: code ?? 1005, reason: ""}), 0); }
    feed(frame) { this.onmessage({data: JSON.stringify(frame)}); }
  }
  window.sockets = [];
  window.Baton = Baton;
  window.FakeSocket = FakeSocket;
  window.tick = () => new Promise((r) => setTimeout(r, 0));
  window.collect = async (stream) => {
    const out = [];
    for await (const ev of stream) out.push(ev);
    return out;
  };
}
"""


def test_duplicate_seqs_are_dropped_and_resets_passed_on(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    page.evaluate(FAKE_JS)
    result = page.evaluate(
        """async () => {
          const baton = new Baton("ws://fake/v1/stream", {WebSocket: FakeSocket, key: "k1"});
          const messages = [{role: "user", content: "hi"}];
          const done = collect(baton.stream({messages, max_tokens: 5}));
          await tick(); await tick();
          const ws = sockets[0];
          const f = (seq, type, extra) => ws.feed({type, stream: "st_1", seq, ...extra});
          f(0, "started", {ref: "r1", provider: "a"});
          f(1, "delta", {text: "He"});
          f(1, "delta", {text: "He"});
          f(0, "started", {ref: "r1", provider: "a"});
          const reset = {from: "a", to: "b", reason: "reset", mode: "reset", phase: "midstream"};
          f(2, "failover", reset);
          f(2, "failover", reset);
          f(3, "delta", {text: "Hi"});
          f(4, "reasoning", {text: "so"});
          f(5, "tool_call", {index: 0, id: "c", name: "n", arguments: "{}"});
          f(3, "delta", {text: "Hi"});
          f(6, "done", {finish_reason: "stop"});
          f(7, "delta", {text: "late"});
          return {events: await done, sent: ws.sent, protocols: ws.protocols,
                  duplicates: baton.stats.duplicates};
        }"""
    )
    events = result["events"]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4, 5, 6]
    assert [e["type"] for e in events] == [
        "started", "delta", "failover", "delta", "reasoning", "tool_call", "done"
    ]  # fmt: skip
    assert events[2]["reset"] is True and events[2]["mode"] == "reset"
    assert result["duplicates"] == 4
    assert result["protocols"] == ["baton.v1", "baton.key.k1"]
    assert result["sent"] == [
        {
            "type": "start", "ref": "r1", "model": "default",
            "messages": [{"role": "user", "content": "hi"}], "params": {"max_tokens": 5},
        }
    ]  # fmt: skip


def test_reconnect_resumes_after_the_last_seq(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    page.evaluate(FAKE_JS)
    result = page.evaluate(
        """async () => {
          const baton = new Baton("ws://fake/v1/stream",
                                  {WebSocket: FakeSocket, initialDelay: 1, random: () => 0});
          const done = collect(baton.stream({messages: []}));
          await tick(); await tick();
          sockets[0].feed({type: "started", stream: "st_9", ref: "r1", seq: 0});
          sockets[0].feed({type: "delta", stream: "st_9", seq: 1, text: "a"});
          sockets[0].feed({type: "delta", stream: "st_9", seq: 2, text: "b"});
          sockets[0].close(1006);
          while (sockets.length < 2 || !sockets[1].sent.length) await tick();
          const second = sockets[1];
          second.feed({type: "delta", stream: "st_9", seq: 2, text: "b"});  // a replay
          second.feed({type: "delta", stream: "st_9", seq: 3, text: "c"});
          second.feed({type: "done", stream: "st_9", seq: 4, finish_reason: "stop"});
          const events = await done;
          return {text: events.filter((e) => e.type === "delta").map((e) => e.text).join(""),
                  seqs: events.map((e) => e.seq), resent: second.sent, stats: baton.stats};
        }"""
    )
    assert result["resent"] == [{"type": "resume", "stream": "st_9", "after": 2}]
    assert result["text"] == "abc"
    assert result["seqs"] == [0, 1, 2, 3, 4]
    assert result["stats"] == {"duplicates": 1, "resumes": 1, "reconnects": 1}


def test_abort_before_started_cancels_once_the_server_names_it(
    page: Any, baton: BatonProcess
) -> None:
    page.goto(baton.http + "/")
    page.evaluate(FAKE_JS)
    result = page.evaluate(
        """async () => {
          const baton = new Baton("ws://fake/v1/stream", {WebSocket: FakeSocket});
          const controller = new AbortController();
          const done = collect(baton.stream({messages: [], signal: controller.signal}))
            .then(() => "ended", (err) => err.name);
          await tick(); await tick();
          controller.abort();
          const outcome = await done;
          sockets[0].feed({type: "started", stream: "st_5", ref: "r1", seq: 0});
          return {outcome, sent: sockets[0].sent.map((f) => f.type + ":" + (f.stream ?? ""))};
        }"""
    )
    assert result == {"outcome": "AbortError", "sent": ["start:", "cancel:st_5"]}


def test_page_streams_an_answer_and_is_screenshotted(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    page.fill("#prompt", QUESTION[0]["content"])
    page.click("#send")
    page.wait_for_function("window.batonPage.state.last === 'done'")
    text = page.evaluate(
        "[...document.querySelectorAll('#answer .seg')].map((s) => s.textContent).join('')"
    )
    assert text == reference_text(baton)
    assert page.locator("#answer .seg").count() == 1
    assert page.locator("#answer .seam").count() == 0
    assert page.inner_text("#outcome") == "Done (stop) by sim-openai."
    # The provider panel shows both simulated providers from /status.
    page.wait_for_selector("#providers tbody tr[data-provider='sim-anthropic']")
    assert page.inner_text("#providers tr[data-provider='sim-openai'] .state") == "healthy"
    # The embedded default's simulators take faults: a button per provider and fault.
    page.wait_for_selector("#faults", state="visible")
    buttons = page.eval_on_selector_all(
        "#fault-buttons button", "(bs) => bs.map((b) => b.dataset.provider + ':' + b.dataset.fault)"
    )
    assert buttons == [
        f"{provider}:{fault}"
        for provider in ("sim-openai", "sim-anthropic")
        for fault in ("reset", "stall", "status503")
    ]
    shot = artifacts_dir() / "page-answer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.errors == []
