"""Issue 18's four browser tests of the page at ``GET /``, in Chromium against ``baton serve``.

The failover of the screenshot test is scheduled in the simulator (``failing_baton``); the
"reset now" and "503 for 20 s" tests press the page's fault buttons, which break the embedded
default's own simulators through ``/sim/faults``.
"""

from __future__ import annotations

import re
from typing import Any

from .conftest import BatonProcess, artifacts_dir
from .test_baton_js import QUESTION, reference_text

ANSWER_TEXT = "[...document.querySelectorAll('#answer .seg')].map((s) => s.textContent).join('')"


def ask(page: Any, baton: BatonProcess) -> None:
    page.goto(baton.http + "/")
    page.fill("#prompt", QUESTION[0]["content"])
    page.click("#send")
    page.wait_for_function("window.batonPage.state.text.length > 20")


def reset_now_mid_answer(page: Any, baton: BatonProcess) -> str:
    """Ask, press "reset now" for the provider writing the answer; returns that provider."""
    ask(page, baton)
    page.wait_for_selector("#faults", state="visible", timeout=5_000)
    writer = page.get_attribute("#answer .seg", "data-provider")
    page.click(f"#fault-buttons button[data-provider='{writer}'][data-fault='reset']")
    page.wait_for_function("window.batonPage.state.last === 'done'", timeout=20_000)
    return str(writer)


def test_reset_now_gives_one_answer_with_one_seam(page: Any, baton: BatonProcess) -> None:
    writer = reset_now_mid_answer(page, baton)
    assert page.evaluate(ANSWER_TEXT) == reference_text(baton)  # exactly once, nothing lost
    seams = page.locator("#answer .seam")
    assert seams.count() == 1
    assert seams.first.get_attribute("data-from") == writer
    assert seams.first.get_attribute("data-to") not in (None, writer)
    assert seams.first.get_attribute("data-reason")
    assert page.evaluate("window.batonPage.state.seams.length") == 1
    assert page.errors == []


def test_offline_mid_answer_resumes_without_loss(page: Any, baton: BatonProcess) -> None:
    ask(page, baton)
    stream = page.evaluate("[...window.batonPage.baton.byId.keys()][0]")
    page.context.set_offline(True)
    page.wait_for_timeout(3_000)  # the 3 s offline, mid-answer (the answer takes ~3 s)
    page.context.set_offline(False)
    page.wait_for_function("!window.batonPage.state.running", timeout=20_000)
    assert page.inner_text("#outcome") == "Done (stop) by sim-openai."
    assert page.evaluate(ANSWER_TEXT) == reference_text(baton)
    assert page.locator("#answer .seam").count() == 0
    ended = baton.wait_log(rf"stream {stream[:8]}\S* finished: .*outcome=(\w+)")
    assert ended.group(1) == "done"  # the upstream answer was never cancelled
    assert not re.search(rf"cancels stream {stream}|stream {stream}: .*cancelling", baton.log())


OPEN_JS = """
(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve("open"); };
  ws.onclose = (ev) => resolve("closed " + ev.code);
})
"""


def test_a_page_of_another_origin_cannot_open_the_websocket(
    page: Any, baton: BatonProcess, other_origin: str
) -> None:
    page.goto(baton.http + "/")
    assert page.evaluate(OPEN_JS, baton.ws) == "open"  # Baton's own page may
    page.goto(other_origin + "/")
    assert page.evaluate(OPEN_JS, baton.ws) == "closed 1006"
    baton.wait_log(rf"refused origin '?{re.escape(other_origin)}")


def test_the_page_marks_a_failover_at_its_seam_and_is_screenshotted(
    page: Any, failing_baton: BatonProcess
) -> None:
    ask(page, failing_baton)  # sim-openai's answer is cut after 30 tokens (a TCP reset)
    page.wait_for_function("window.batonPage.state.last === 'done'", timeout=20_000)
    seams = page.locator("#answer .seam")
    assert seams.count() == 1
    assert seams.first.get_attribute("data-from") == "sim-openai"
    assert seams.first.get_attribute("data-to") == "sim-anthropic"
    assert seams.first.get_attribute("data-mode") == "continue"
    assert seams.first.get_attribute("data-reason")
    writers = page.eval_on_selector_all("#answer .seg", "(s) => s.map((e) => e.dataset.provider)")
    assert writers == ["sim-openai", "sim-anthropic"]
    # The spliced answer is the complete answer, exactly once (the next request is healthy).
    assert page.evaluate(ANSWER_TEXT) == reference_text(failing_baton)
    assert page.inner_text("#outcome") == "Done (stop) by sim-anthropic after 1 failover(s)."
    polls = page.evaluate("window.batonPage.state.statusPolls")
    # Two more /status polls (one a second), so the panel shows the providers after it.
    page.wait_for_function(f"window.batonPage.state.statusPolls >= {polls + 2}")
    shot = artifacts_dir() / "page-failover.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.errors == []


ASK_JS = """
async () => {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "default", messages: [{ role: "user", content: "Hi?" }] }),
  });
  return [res.status, (await res.json()).model];
}
"""
STATE_OF = "document.querySelector(\"#providers tr[data-provider='{}'] .state\")?.textContent"
BREAKER_TIMEOUT = 40_000  # ms: the breaker rests its 30 s cooldown before it tests recovery


def test_503_for_20_s_opens_the_breaker_and_the_panel_shows_it_recover(
    page: Any, baton: BatonProcess
) -> None:
    page.goto(baton.http + "/")
    page.wait_for_selector("#faults", state="visible", timeout=5_000)
    page.click("#fault-buttons button[data-provider='sim-openai'][data-fault='status503']")
    page.wait_for_function("document.querySelector('#fault-result').textContent.includes('sent')")
    # Live requests meet the 503s and fail over: enough failures in a row open the breaker.
    for _ in range(3):
        assert page.evaluate(ASK_JS) == [200, "sim-claude"]
    state = STATE_OF.format("sim-openai")
    page.wait_for_function(f"({state} ?? '').startsWith('unhealthy')")
    assert page.evaluate(STATE_OF.format("sim-anthropic")) == "healthy"
    assert page.evaluate(ASK_JS) == [200, "sim-claude"]  # an open breaker gets no traffic
    # After its cooldown the breaker tests recovery (the 503s are over by then): the panel
    # shows it probing, and a live request, its trial, finds sim-openai answering again.
    page.wait_for_function(f"{state} === 'probing'", timeout=BREAKER_TIMEOUT)
    assert page.evaluate(ASK_JS) == [200, "sim-gpt"]
    page.wait_for_function(f"{state} === 'healthy'")
    assert page.errors == []
