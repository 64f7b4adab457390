// The page at GET /: ask a question, watch the answer stream, see every failover at its seam.
// Plain ES module over baton.js; no build step, no CDN.
import { Baton } from "/client/baton.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Where the WebSocket is: ?ws=URL, else this host on the port Baton wrote into the page.
function wsUrl() {
  if (params.get("ws")) return params.get("ws");
  const port = document.querySelector('meta[name="baton-ws-port"]')?.content;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const usable = port && /^\d+$/.test(port) ? port : "8765";
  return `${scheme}//${location.hostname}:${usable}/v1/stream`;
}

const baton = new Baton(wsUrl(), { key: params.get("key") ?? undefined });
const connection = $("connection");
baton.addEventListener("open", () => (connection.textContent = "Connected"));
baton.addEventListener("resumed", () => (connection.textContent = "Reconnected; streams resumed"));
baton.addEventListener("reconnecting", (e) => {
  connection.textContent = e.detail.delay === null
    ? "Connection lost; offline, waiting for the network"
    : `Connection lost; retrying in ${(e.detail.delay / 1000).toFixed(1)} s`;
});
baton.addEventListener("close", () => {
  if (!connection.textContent.startsWith("Connection lost")) connection.textContent = "Disconnected";
});

// What tests and curious users can read: the answer's text and its seams.
const state = { text: "", seams: [], running: false, events: 0, last: null, statusPolls: 0 };
window.batonPage = { baton, state };

let controller = null;
let segment = null; // the span the current provider writes into

function newSegment(provider) {
  segment = document.createElement("span");
  segment.className = "seg";
  segment.dataset.provider = provider;
  segment.title = `written by ${provider}`;
  segment.style.setProperty("--hue", hue(provider));
  $("answer").append(segment);
  addLegend(provider);
}

function hue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return String(h);
}

function addLegend(provider) {
  const legend = $("legend");
  if ([...legend.children].some((li) => li.dataset.provider === provider)) return;
  const li = document.createElement("li");
  li.dataset.provider = provider;
  li.style.setProperty("--hue", hue(provider));
  li.textContent = `written by ${provider}`;
  legend.append(li);
}

function markSeam(ev) {
  const seam = document.createElement("mark");
  seam.className = "seam";
  seam.setAttribute("role", "note");
  const verb = ev.mode === "reset" ? "restarted on" : "continued by";
  seam.textContent = `⇄ ${verb} ${ev.to} (${ev.from}: ${ev.reason})`;
  seam.title = `failover ${ev.phase}, mode ${ev.mode}: ${ev.from} → ${ev.to} (${ev.model})`;
  seam.dataset.from = ev.from;
  seam.dataset.to = ev.to;
  seam.dataset.reason = ev.reason;
  seam.dataset.mode = ev.mode;
  $("answer").append(seam);
  state.seams.push({ from: ev.from, to: ev.to, reason: ev.reason, mode: ev.mode });
}

async function ask(event) {
  event.preventDefault();
  if (controller) controller.abort();
  controller = new AbortController();
  const answer = $("answer");
  answer.replaceChildren();
  $("legend").replaceChildren();
  $("outcome").textContent = "";
  Object.assign(state, { text: "", seams: [], running: true, events: 0, last: null });
  answer.setAttribute("aria-busy", "true");
  $("send").disabled = true;
  $("stop").disabled = false;
  const messages = [{ role: "user", content: $("prompt").value }];
  try {
    for await (const ev of baton.stream({ model: $("model").value, messages, signal: controller.signal })) {
      state.events += 1;
      state.last = ev.type;
      if (ev.type === "started") {
        newSegment(ev.provider);
      } else if (ev.type === "delta") {
        if (!segment) newSegment("?");
        segment.append(ev.text);
        state.text += ev.text;
      } else if (ev.type === "failover") {
        if (ev.reset) {
          // The text so far is discarded: strike it through, out of the answer's text.
          for (const seg of answer.querySelectorAll(".seg")) seg.className = "discarded";
          state.text = "";
        }
        markSeam(ev);
        newSegment(ev.to);
      } else if (ev.type === "done") {
        $("outcome").textContent = `Done (${ev.finish_reason}) by ${ev.provider}` +
          (state.seams.length ? ` after ${state.seams.length} failover(s).` : ".");
      } else if (ev.type === "error") {
        $("outcome").textContent = `Error ${ev.code}: ${ev.message}`;
      }
    }
  } catch (err) {
    $("outcome").textContent = err?.name === "AbortError" ? "Stopped." : `Error: ${err}`;
  } finally {
    state.running = false;
    answer.setAttribute("aria-busy", "false");
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", ask);
$("stop").addEventListener("click", () => controller?.abort());

// --- the provider panel: /status every second ----------------------------------------------

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderStatus(data) {
  const body = $("providers").querySelector("tbody");
  const rows = [];
  for (const [name, p] of Object.entries(data.providers ?? {})) {
    const tr = document.createElement("tr");
    tr.dataset.provider = name;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    const pool = p.pool ? `${p.pool.in_use}/${p.pool.max}` + (p.pool.waiting ? ` (+${p.pool.waiting})` : "") : "–";
    const latency = p.ttft_ewma == null ? "–" : `${Math.round(p.ttft_ewma * 1000)} ms`;
    const retry = p.next_try_in == null ? "" : `, retry in ${Math.ceil(p.next_try_in)} s`;
    tr.append(th, cell(p.state + retry, `state state-${p.state}`), cell(p.traffic ?? "–"),
      cell(pool), cell(latency), cell(String(p.consecutive_failures ?? 0)));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  $("providers").hidden = false;
  $("status-note").textContent = data.ready ? "Ready." : `Not ready: ${data.reason}`;
  $("streams").textContent = `Active streams: ${data.active_streams ?? 0}` +
    (data.detached_streams != null ? `, detached: ${data.detached_streams}` : "");
}

async function pollStatus() {
  try {
    const res = await fetch("/status", { cache: "no-store" });
    if (res.ok) renderStatus(await res.json());
    else if (res.status === 401) $("status-note").textContent = "/status needs the operator key.";
    else $("status-note").textContent = `/status answered ${res.status}.`;
  } catch {
    $("status-note").textContent = "Cannot reach /status.";
  }
  state.statusPolls += 1;
  setTimeout(pollStatus, 1000);
}
pollStatus();

// --- the fault panel: only when Baton runs its own simulated providers ----------------------

const FAULTS = [
  ["reset", "Reset now"],
  ["stall", "Stall"],
  ["status503", "503 for 20 s"],
];

async function setupFaults() {
  let names;
  try {
    const res = await fetch("/sim/faults", { cache: "no-store" });
    if (res.status !== 200) return;
    const list = await res.json();
    names = (Array.isArray(list) ? list : list.providers ?? []).map((p) =>
      typeof p === "string" ? p : p.name ?? p.provider);
  } catch {
    return;
  }
  const box = $("fault-buttons");
  for (const name of names) {
    const group = document.createElement("div");
    group.className = "fault-group";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `Faults for ${name}`);
    const title = document.createElement("span");
    title.textContent = name;
    group.append(title);
    for (const [fault, label] of FAULTS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.dataset.provider = name;
      button.dataset.fault = fault;
      button.setAttribute("aria-label", `${label}: ${name}`);
      button.addEventListener("click", () => inject(name, fault, label));
      group.append(button);
    }
    box.append(group);
  }
  $("faults").hidden = false;
}

async function inject(name, fault, label) {
  const out = $("fault-result");
  try {
    const res = await fetch(`/sim/faults/${encodeURIComponent(name)}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ fault, seconds: 20 }),
    });
    out.textContent = res.ok ? `${label} sent to ${name}.` : `${name} refused the fault (${res.status}).`;
  } catch (err) {
    out.textContent = `Could not send the fault: ${err}`;
  }
}
setupFaults();
