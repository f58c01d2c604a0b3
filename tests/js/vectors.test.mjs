// The shared protocol vectors (tests/data/protocol_vectors.json) run against sente_lite.js,
// one test per vector, with an in-memory WebSocket passed as options.WebSocket (no network).
// The same file is run against the Python ClientSession by tests/core/test_protocol_vectors.py;
// the format is described in docs/protocol.md ("Appendix: protocol vectors").
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SenteLite, repoRoot } from "./helpers.mjs";

const DATA = JSON.parse(readFileSync(join(repoRoot, "tests", "data", "protocol_vectors.json"), "utf8"));
const COUNTERS = Object.fromEntries(Object.entries(DATA.counters).map(([k, v]) => [k, v.js]));
const DELIVERIES = ["status", "event", "channel-msg", "recovery", "presence"];
/** Longest wait for the client to open its next socket (it reconnects after a 0 ms backoff). */
const SOCKET_WAIT_MS = 5000;
const { encode: mpEncode, decode: mpDecode } = SenteLite.msgpack;

class Mismatch extends Error {}

// -- patterns ---------------------------------------------------------------------------
function typeOf(v) {
  if (v === null) { return "null"; }
  if (Array.isArray(v)) { return "array"; }
  return typeof v === "object" ? "object" : typeof v;
}

function isAny(kind, v) {
  switch (kind) {
    case null: return true;
    case "integer": return Number.isInteger(v);
    default: return typeOf(v) === kind;
  }
}

const toHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");

/** Check `val` against the vector pattern `pat` (placeholders: $any, $capture, $ref; {"$bin": hex}: bytes). */
function match(pat, val, caps, where) {
  if (pat !== null && typeof pat === "object" && !Array.isArray(pat)) {
    if ("$bin" in pat) {
      if (!(val instanceof Uint8Array) || toHex(val) !== pat.$bin) {
        throw new Mismatch(`${where}: expected the bytes ${pat.$bin}, got ${val instanceof Uint8Array ? "bytes " + toHex(val) : JSON.stringify(val)}`);
      }
      return;
    }
    if ("$any" in pat) {
      if (!isAny(pat.$any, val)) { throw new Mismatch(`${where}: expected any ${pat.$any}, got ${JSON.stringify(val)}`); }
      if ("not_contains" in pat && String(val).includes(pat.not_contains)) {
        throw new Mismatch(`${where}: ${JSON.stringify(val)} must not contain ${JSON.stringify(pat.not_contains)}`);
      }
      if ("not" in pat) {
        let matched = true;
        try { match(pat.not, val, caps, where); } catch (e) { if (e instanceof Mismatch) { matched = false; } else { throw e; } }
        if (matched) { throw new Mismatch(`${where}: ${JSON.stringify(val)} must not match ${JSON.stringify(pat.not)}`); }
      }
      return;
    }
    if ("$capture" in pat) {
      const name = pat.$capture;
      if (name in caps && JSON.stringify(caps[name]) !== JSON.stringify(val)) {
        throw new Mismatch(`${where}: ${name} was ${JSON.stringify(caps[name])}, now ${JSON.stringify(val)}`);
      }
      caps[name] = val;
      return;
    }
    if ("$ref" in pat) { pat = caps[pat.$ref]; }
  }
  const t = typeOf(pat);
  if (t !== typeOf(val)) { throw new Mismatch(`${where}: expected ${JSON.stringify(pat)}, got ${JSON.stringify(val)}`); }
  if (t === "array") {
    if (pat.length !== val.length) { throw new Mismatch(`${where}: expected ${JSON.stringify(pat)}, got ${JSON.stringify(val)}`); }
    pat.forEach((p, i) => match(p, val[i], caps, `${where}[${i}]`));
  } else if (t === "object") {
    const a = Object.keys(pat).sort(), b = Object.keys(val).sort();
    if (JSON.stringify(a) !== JSON.stringify(b)) { throw new Mismatch(`${where}: expected ${JSON.stringify(pat)}, got ${JSON.stringify(val)}`); }
    a.forEach((k) => match(pat[k], val[k], caps, `${where}.${k}`));
  } else if (pat !== val) {
    throw new Mismatch(`${where}: expected ${JSON.stringify(pat)}, got ${JSON.stringify(val)}`);
  }
}

function matchList(pats, vals, caps, where) {
  if (pats.length !== vals.length) {
    throw new Mismatch(`${where}: expected ${pats.length} items ${JSON.stringify(pats)}, got ${vals.length}: ${JSON.stringify(vals)}`);
  }
  pats.forEach((p, i) => match(p, vals[i], caps, `${where}[${i}]`));
}

const resolve = (v) => (v !== null && typeof v === "object" && "$def" in v ? DATA.defs[v.$def] : v);

/** `{"$bin": hex}` in a vector's value replaced by those bytes (a Uint8Array). */
function binify(v) {
  if (Array.isArray(v)) { return v.map(binify); }
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$bin") { return hexBytes(v.$bin); }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, binify(x)]));
  }
  return v;
}

/** `{{name}}` in strings replaced by the captured value. */
function fill(v, caps) {
  if (typeof v === "string") { return v.replace(/\{\{([A-Za-z0-9_-]+)\}\}/g, (_, n) => String(caps[n])); }
  if (Array.isArray(v)) { return v.map((x) => fill(x, caps)); }
  if (v !== null && typeof v === "object") { return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x, caps)])); }
  return v;
}

/** The exact text of a `recv` step. */
function wireText(value, caps) {
  const v = resolve(value);
  if (typeof v === "string") { return fill(v, caps); }
  if (v !== null && typeof v === "object" && "$nest" in v) {
    const inner = v.$nest.levels - 1;
    return `["${v.$nest.event}",` + "[".repeat(inner) + "]".repeat(inner) + "]";
  }
  return JSON.stringify(fill(v, caps));
}

const hexBytes = (hex) => Uint8Array.from(hex.match(/../g) || [], (h) => parseInt(h, 16));
const arrayBufferOf = (bytes) => bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);

// -- the in-memory WebSocket --------------------------------------------------------------
function fakeSocketClass(sockets) {
  return class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.binaryType = "nodebuffer";  // what Node's ws starts with; the client may change it
      this.sent = [];
      sockets.push(this);
    }
    send(frame) {
      if (this.readyState !== 1) { throw new Error("not open"); }
      this.sent.push(frame);
    }
    close() { this.readyState = 3; }
  };
}

/** Let every Promise callback and 0 ms timer that is due run. */
const settle = () => new Promise((r) => setTimeout(r, 0)).then(() => new Promise((r) => setImmediate(r)));

// -- the driver ----------------------------------------------------------------------------
class Driver {
  constructor(packer) {
    this.sockets = [];
    this.sent = [];
    this.events = [];
    this.ended = false;
    this.binary = packer === "msgpack";
    this.client = new SenteLite.Client("ws://127.0.0.1:1/chsk", {
      WebSocket: fakeSocketClass(this.sockets), clientId: "vector-client", packer, logger: null,
      backoffBaseMs: 0, backoffMaxMs: 0, fetch: () => Promise.reject(new Error("no network here")),
    });
    this.client.onStatus((status) => this.record({ type: "status", status }));
    this.client.onServerChannel((m) => this.record({ type: "channel-msg", channel: m.channelId, data: m.data,
                                                     from: m.from, offset: m.offset, epoch: m.epoch }));
    this.client.onRecovery((a) => {
      if (a.recovered === undefined) { return; }
      const out = { type: "recovery", channel: a.channelId, recovered: a.recovered, offset: a.offset, epoch: a.epoch };
      if (a.reason !== undefined && a.reason !== null) { out.reason = a.reason; }
      this.record(out);
    });
  }

  record(ev) { if (!this.ended) { this.events.push(ev); } }

  get ws() { return this.sockets[this.sockets.length - 1]; }

  async open() {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    const seen = this.opened || 0;
    while (this.sockets.length <= seen) {
      if (Date.now() > deadline) { throw new Error("the client opened no new socket"); }
      await settle();
    }
    this.opened = this.sockets.length;
    this.ws.readyState = 1;
    this.ws.onopen({});
    await settle();
  }

  /** A frame as the socket would hand it over: text as a string, binary as binaryType says. */
  async receive(data) {
    if (typeof data !== "string" && this.ws.binaryType === "nodebuffer") { data = Buffer.from(data); }
    this.ws.onmessage({ data });
    await settle();
  }

  async drop() {
    this.collect();
    const ws = this.ws;
    ws.readyState = 3;
    ws.onclose({ code: 1006, reason: "" });
    await settle();
  }

  answer(call, kind) {
    return [
      (value) => {
        if (kind === "unsubscribe") { this.record({ type: "reply", call }); return; }
        this.record({ type: "reply", call, value: kind === "plain" ? value : wireKeys(value) });
      },
      (err) => this.record({ type: "error", call, code: err.code }),
    ];
  }

  async call(step) {
    const c = this.client;
    switch (step.call) {
      case "on":
        c.on(step.event, (data) => {
          this.record({ type: "event", event: step.event, data });
          if ("raise" in step) { throw new Error(step.raise); }
          return binify(step.reply);
        });
        break;
      case "send": c.send(step.event, binify(step.data)); break;
      case "request": c.request(step.event, binify(step.data)).then(...this.answer(step.id, "plain")); break;
      case "subscribe": {
        const presence = (ch) => this.record({ type: "presence", channel: ch.channelId, joined: ch.joined,
                                                conn: ch.member.connId });
        c.subscribe(step.channel, (m) => this.record({ type: "channel-msg", channel: m.channelId, data: m.data,
                                                       from: m.from, offset: m.offset, epoch: m.epoch }),
                    { ...("since" in step ? { since: step.since } : {}), onJoin: presence, onLeave: presence })
          .then(...this.answer(step.id, "subscribe"));
        break;
      }
      case "history":
        c.history(step.channel, { limit: step.limit, since: step.since, reverse: step.reverse, page: step.page })
          .then(...this.answer(step.id, "plain"));
        break;
      case "unsubscribe": c.unsubscribe(step.channel).then(...this.answer(step.id, "unsubscribe")); break;
      case "publish":
        if (step.ack) {
          c.publish(step.channel, binify(step.data), { ack: true, excludeSender: !!step.exclude_sender }).then(...this.answer(step.id, "publish"));
        } else { c.publish(step.channel, binify(step.data), { excludeSender: !!step.exclude_sender }); }
        break;
      default: throw new Error("unknown call " + step.call);
    }
    await settle();
  }

  /** Move what every socket sent to this.sent, decoded. */
  collect() {
    for (const ws of this.sockets) {
      for (const f of ws.sent.splice(0)) { this.sent.push(typeof f === "string" ? JSON.parse(f) : mpDecode(f)); }
    }
  }

  state() {
    const c = this.client, info = c.handshake || {};
    return { status: c.status, uid: c.uid, csrf_token: c.csrfToken, first: c.first, conn_id: c.connId,
             server_id: c.serverId, features: info.features === undefined ? null : info.features,
             heartbeat_ms: c._heartbeatMs, subscriptions: c.subscriptions(),
             server_subscriptions: c.serverSubscriptions() };
  }

  counter(name) { return this.client.stats()[COUNTERS[name]]; }

  close() { this.ended = true; this.client.close(); }
}

/** A JS answer object ({channelId, ...}) with the wire's key names. */
function wireKeys(v) {
  if (v === null || typeof v !== "object" || Array.isArray(v)) { return v; }
  const out = {};
  for (const [k, x] of Object.entries(v)) { out[k === "channelId" ? "channel-id" : k] = x; }
  return out;
}

/** `[event, null]` and `[event]` are the same frame (section 2). */
const normalize = (f) => (f.length === 2 && f[1] === null ? [f[0]] : f);
const split = (evs) => [evs.filter((e) => DELIVERIES.includes(e.type)), evs.filter((e) => !DELIVERIES.includes(e.type))];

function checkOutputs(d, step, caps, where) {
  if ("expect_sent" in step) {
    d.collect();
    const sent = d.sent.splice(0).map(normalize);
    matchList(step.expect_sent, sent, caps, `${where} sent`);
  }
  if ("expect_events" in step) {
    const [wantD, wantA] = split(step.expect_events), [gotD, gotA] = split(d.events.splice(0));
    matchList(wantD, gotD, caps, `${where} events`);
    matchList(wantA, gotA, caps, `${where} answers`);
  }
  if ("expect_counters" in step) {
    const got = Object.fromEntries(Object.keys(step.expect_counters).map((k) => [k, d.counter(k)]));
    match(step.expect_counters, got, caps, `${where} counters`);
  }
  if ("expect_state" in step) {
    const state = d.state();
    match(step.expect_state, Object.fromEntries(Object.keys(step.expect_state).map((k) => [k, state[k]])), caps, `${where} state`);
  }
}

export async function runVector(vector) {
  const d = new Driver(vector.packer || "json");
  const caps = {};
  try {
    await d.open();
    for (const [i, step] of vector.steps.entries()) {
      const where = `step ${i}`;
      if ("recv" in step) {
        await d.receive(wireText(step.recv, caps));
      } else if ("recv_binary" in step) {
        await d.receive(arrayBufferOf(hexBytes(resolve(step.recv_binary))));
      } else if ("recv_msgpack" in step) {
        await d.receive(arrayBufferOf(mpEncode(binify(fill(resolve(step.recv_msgpack), caps)))));
      } else if ("call" in step) {
        await d.call(step);
      } else if ("drop" in step) {
        await d.drop();
      } else if ("open" in step) {
        await d.open();
      }
      checkOutputs(d, step, caps, where);
    }
    d.collect();
    if (d.sent.length || d.events.length) {
      throw new Mismatch(`end: not expected: sent ${JSON.stringify(d.sent.map(normalize))}, events ${JSON.stringify(d.events)}`);
    }
  } finally {
    d.close();
  }
}

for (const vector of DATA.vectors) {
  const reason = vector.skip && vector.skip.js;
  test(vector.name, reason ? { skip: "sente_lite.js: " + reason } : {}, () => runVector(vector));
}

/** Copies of `vector` with one expectation changed: the last counter check with every
 *  value + 1, the last non-empty events check and sent check each one item short. */
function mutations(vector) {
  const out = [];
  for (const key of ["expect_counters", "expect_events", "expect_sent"]) {
    const steps = vector.steps.map((st, i) => (st[key] && (key === "expect_counters" || st[key].length) ? i : -1)).filter((i) => i >= 0);
    if (!steps.length) { continue; }
    const changed = JSON.parse(JSON.stringify(vector));
    const step = changed.steps[steps[steps.length - 1]];
    step[key] = key === "expect_counters"
      ? Object.fromEntries(Object.entries(step[key]).map(([k, v]) => [k, v + 1]))
      : step[key].slice(0, -1);
    out.push([key, changed]);
  }
  return out;
}

test("every vector fails when one of its expectations is changed", async () => {
  for (const vector of DATA.vectors.filter((v) => !(v.skip && v.skip.js))) {
    const changed = mutations(vector);
    assert.ok(changed.length, vector.name + " expects nothing");
    for (const [key, mutant] of changed) {
      await assert.rejects(runVector(mutant), Mismatch, `${vector.name}: ${key} changed and still passed`);
    }
  }
});
