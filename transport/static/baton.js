// baton.js: a browser client for Baton's WebSocket protocol v1. No dependencies, no build step.
//
//   import { Baton } from "/client/baton.js";
//   const baton = new Baton("ws://127.0.0.1:8765/v1/stream", { key: "sk-..." });
//   for await (const ev of baton.stream({ model: "default", messages, signal })) { ... }
//
// Why a client library at all: Baton keeps one answer coherent across provider failures, but a
// browser drops its own connection all the time (network switch, sleep, proxies). This module
// keeps a page's streams alive across that: one connection carries every stream; when it drops,
// it reconnects with exponential backoff and jitter and sends {"type": "resume", "stream": id,
// "after": lastSeq} for every open stream, and it drops any event whose seq it already has, so
// the consumer sees each seq exactly once, in order.
//
// Events yielded are the server's frames as objects (see README, "WebSocket protocol v1"):
//   started, delta, reasoning, tool_call, tool_call_part, failover, done, error.
// The stream ends after `done` or `error`. A `failover` with mode "reset" means: discard the
// text (and reasoning, tool calls) received so far; a new answer follows. It is passed through
// as it is, with `reset: true` added, and the consumer applies it (e.g. `text = ""`).
// Errors the client makes itself have the same shape, with these codes: `connection_failed`
// (gave up reconnecting after `maxRetries`), `closed` (baton.close() was called).
//
// Authentication (transport/_auth.py): `key` is sent as the WebSocket subprotocols
// "baton.v1" + "baton.key.KEY" on every connection. `token` is a one-connection token from
// POST /v1/tokens, sent as ?token=; because each one opens a single connection, pass a function
// returning (a promise of) a fresh token so that reconnecting can fetch another.
//
// Cancelling: abort the `signal` (or leave the for-await loop early) and a `cancel` frame is
// sent; after an abort the iterator throws the signal's reason, as fetch() does.

const TERMINAL = new Set(["done", "error"]);

export class Baton extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of Baton's /v1/stream
   * @param {object} [options]
   * @param {string} [options.key]  a client key (sent as subprotocol baton.key.KEY)
   * @param {string | (() => string | Promise<string>)} [options.token]  POST /v1/tokens token(s)
   * @param {number} [options.initialDelay=250]  ms before the first reconnect
   * @param {number} [options.maxDelay=10000]  ms cap of the backoff
   * @param {number} [options.maxRetries=10]  failed reconnects in a row before giving up
   * @param {typeof WebSocket} [options.WebSocket]  the WebSocket class (tests pass a fake)
   * @param {() => number} [options.random]  Math.random by default (the jitter)
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.key = options.key ?? null;
    this.token = options.token ?? null;
    this.initialDelay = options.initialDelay ?? 250;
    this.maxDelay = options.maxDelay ?? 10000;
    this.maxRetries = options.maxRetries ?? 10;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.random = options.random ?? Math.random;
    this.ws = null; // the open (or opening) connection
    this.connected = false;
    this.failures = 0; // failed connection attempts in a row
    this.retryTimer = null;
    this.waitingOnline = false;
    this.closed = false;
    this.nextRef = 1;
    this.byRef = new Map(); // ref -> stream, until `started` names it
    this.byId = new Map(); // stream id -> stream
    this.stats = { duplicates: 0, resumes: 0, reconnects: 0 };
    // A dropped network often leaves a socket that looks open for minutes: when the browser
    // says it went offline, drop the connection at once, and reconnect as soon as it is back.
    if (options.watchNetwork !== false && typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("offline", () => this._drop("offline"));
      globalThis.addEventListener("online", () => this._reconnectNow());
    }
  }

  /**
   * Start a stream; iterate the result for its events.
   * Every option other than model, messages, signal and ref goes into the start's `params`
   * (OpenAI names: max_tokens, temperature, tools, response_format, ...).
   */
  stream({ model = "default", messages, signal, ref, ...params } = {}) {
    if (this.closed) throw new Error("this Baton was closed");
    const st = new ClientStream(this, ref ?? `r${this.nextRef++}`, model, messages, params);
    this.byRef.set(st.ref, st);
    if (signal) {
      if (signal.aborted) {
        st.abort(signal.reason);
      } else {
        const onAbort = () => st.abort(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        st.cleanups.push(() => signal.removeEventListener("abort", onAbort));
      }
    }
    if (!st.aborted) this._send(st.startFrame());
    return st;
  }

  /** Close the connection and end every open stream with error `closed`. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    for (const st of this._open()) st.fail("closed", "The client closed the connection.");
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  // --- the connection --------------------------------------------------------------------

  _open() {
    return [...new Set([...this.byRef.values(), ...this.byId.values()])];
  }

  _send(frame) {
    if (this.connected) {
      this.ws.send(JSON.stringify(frame));
    } else {
      this._connect(); // the frames of open streams are (re)sent once it opens
    }
  }

  async _connect() {
    if (this.ws || this.retryTimer || this.waitingOnline || this.closed) return;
    const attempt = {}; // a placeholder, so a second call while a token is fetched waits
    this.ws = attempt;
    let url = this.url;
    try {
      if (this.token) {
        const token = typeof this.token === "function" ? await this.token() : this.token;
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      }
    } catch (err) {
      this.ws = null;
      this._retry(`getting a token failed: ${err}`);
      return;
    }
    if (this.ws !== attempt) return; // closed meanwhile
    const protocols = this.key ? ["baton.v1", "baton.key." + this.key] : ["baton.v1"];
    const ws = new this.WebSocket(url, protocols);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const again = this.stats.reconnects > 0 || this.failures > 0;
      this.connected = true;
      this.failures = 0;
      this.dispatchEvent(new Event("open"));
      for (const st of this._open()) {
        if (st.aborted) {
          this._forget(st);
        } else if (st.id === null) {
          ws.send(JSON.stringify(st.startFrame())); // never started: ask again (same ref)
        } else {
          st.resuming = true;
          this.stats.resumes += 1;
          ws.send(JSON.stringify({ type: "resume", stream: st.id, after: st.lastSeq }));
        }
      }
      if (again) this.dispatchEvent(new Event("resumed"));
    };
    ws.onmessage = (msg) => {
      if (this.ws === ws) this._frame(msg.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      const was = this.connected;
      this.ws = null;
      this.connected = false;
      this.dispatchEvent(new CustomEvent("close", { detail: { code: ev.code, reason: ev.reason } }));
      if (this._open().length === 0 || this.closed) return; // reconnect lazily, on next stream
      if (was) this.stats.reconnects += 1;
      this._retry(`connection closed (${ev.code})`);
    };
    ws.onerror = () => {}; // a close event always follows
  }

  _drop(why) {
    const ws = this.ws;
    if (!ws || !this.connected) return;
    this.ws = null; // its close event, whenever it comes, is no longer ours
    this.connected = false;
    try {
      ws.close(4000, why);
    } catch {}
    this.dispatchEvent(new CustomEvent("close", { detail: { code: 4000, reason: why } }));
    if (this._open().length === 0 || this.closed) return;
    this.stats.reconnects += 1;
    this._retry(why);
  }

  _reconnectNow() {
    if (!this.retryTimer && !this.waitingOnline) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.waitingOnline = false;
    this.failures = 0;
    this._connect();
  }

  _retry(why) {
    if (globalThis.navigator?.onLine === false) {
      // Offline: no attempt can succeed; the "online" event reconnects (_reconnectNow).
      this.waitingOnline = true;
      this.dispatchEvent(new CustomEvent("reconnecting", { detail: { delay: null, why } }));
      return;
    }
    this.failures += 1;
    if (this.failures > this.maxRetries) {
      this.failures = 0;
      const message = `Could not reach Baton at ${this.url} after ${this.maxRetries} tries (${why}).`;
      for (const st of this._open()) st.fail("connection_failed", message);
      return;
    }
    // Exponential backoff with jitter: a random delay in [base/2, base], so clients that lost
    // the same server do not all come back in the same instant.
    const base = Math.min(this.maxDelay, this.initialDelay * 2 ** (this.failures - 1));
    const delay = base / 2 + (base / 2) * this.random();
    this.dispatchEvent(new CustomEvent("reconnecting", { detail: { delay, why } }));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this._connect();
    }, delay);
  }

  _frame(data) {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      return; // the server only sends JSON; ignore anything else
    }
    if (ev === null || typeof ev !== "object") return;
    if (ev.type === "started" && this.byRef.has(ev.ref)) {
      const st = this.byRef.get(ev.ref);
      this.byRef.delete(ev.ref);
      st.id = ev.stream;
      if (st.aborted) {
        this._cancel(st); // aborted before the server named it
        return;
      }
      this.byId.set(st.id, st);
    }
    let st = ev.stream != null ? this.byId.get(ev.stream) : undefined;
    if (!st && ev.ref != null && this.byRef.has(ev.ref)) st = this.byRef.get(ev.ref);
    if (!st && ev.type === "error" && ev.stream == null) {
      // An error of no stream: a frame the server could not act on. With no ref, it answers
      // the oldest resume still waiting for its first event (a server without resume says
      // bad_request); otherwise it is the connection's and is announced as an event.
      st = this._open().find((s) => s.resuming);
      if (!st) {
        this.dispatchEvent(new CustomEvent("servererror", { detail: ev }));
        return;
      }
    }
    if (st) st.receive(ev);
  }

  _cancel(st) {
    if (st.id !== null && this.connected) {
      this.ws.send(JSON.stringify({ type: "cancel", stream: st.id }));
    }
  }

  _forget(st) {
    if (this.byRef.get(st.ref) === st) this.byRef.delete(st.ref);
    if (st.id !== null && this.byId.get(st.id) === st) this.byId.delete(st.id);
  }
}

/** One stream: an async iterable of its events, each seq exactly once and in order. */
class ClientStream {
  constructor(baton, ref, model, messages, params) {
    this.baton = baton;
    this.ref = ref;
    this.model = model;
    this.messages = messages;
    this.params = params;
    this.id = null; // the server's stream id, from `started`
    this.lastSeq = -1; // the last seq delivered
    this.resuming = false;
    this.queue = [];
    this.wake = null;
    this.ended = false; // the terminal event is queued
    this.aborted = false;
    this.abortReason = undefined;
    this.cleanups = [];
  }

  startFrame() {
    const frame = { type: "start", ref: this.ref, model: this.model, messages: this.messages };
    if (Object.keys(this.params).length) frame.params = this.params;
    return frame;
  }

  receive(ev) {
    if (this.ended || this.aborted) return;
    this.resuming = false;
    if (typeof ev.seq === "number") {
      if (ev.seq <= this.lastSeq) {
        this.baton.stats.duplicates += 1; // a replay of what we have: drop it
        return;
      }
      if (ev.seq > this.lastSeq + 1 && this.id !== null) {
        // A gap (never on a healthy connection): ask for the missing events again.
        this.resuming = true;
        this.baton.stats.resumes += 1;
        this.baton._send({ type: "resume", stream: this.id, after: this.lastSeq });
        return;
      }
      this.lastSeq = ev.seq;
    }
    if (ev.type === "failover" && ev.mode === "reset") ev = { ...ev, reset: true };
    this._push(ev);
  }

  fail(code, message) {
    if (this.ended) return;
    this._push({ type: "error", stream: this.id, seq: null, code, message, retryable: true });
  }

  abort(reason) {
    if (this.ended || this.aborted) return;
    this.aborted = true;
    this.abortReason = reason ?? new DOMException("The stream was aborted.", "AbortError");
    this._stop();
    if (this.wake) this.wake();
  }

  _stop() {
    // Cancel now if the server named the stream; else when its `started` comes (byRef keeps
    // it until then, while connected).
    if (this.id !== null) {
      this.baton._cancel(this);
      this.baton._forget(this);
    } else if (!this.baton.connected) {
      this.baton._forget(this);
    }
    this._finish();
  }

  _push(ev) {
    this.queue.push(ev);
    if (TERMINAL.has(ev.type)) {
      this.ended = true;
      this.baton._forget(this);
      this._finish();
    }
    if (this.wake) this.wake();
  }

  _finish() {
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }

  async next() {
    for (;;) {
      if (this.queue.length) return { value: this.queue.shift(), done: false };
      if (this.aborted) {
        this.queue = [];
        this.ended = true;
        throw this.abortReason;
      }
      if (this.ended) return { value: undefined, done: true };
      await new Promise((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }

  async return() {
    // The consumer left the loop early: cancel what is still running.
    if (!this.ended && !this.aborted) {
      this.aborted = true;
      this._stop();
    }
    this.ended = true;
    this.queue = [];
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}
