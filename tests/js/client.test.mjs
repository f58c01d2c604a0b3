// sente_lite.js under Node (with the npm `ws` WebSocket) against a real sente_lite server.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { SenteLite, WebSocket, startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

let srv;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => { srv = await startServer(["--heartbeat-ms", "300"]); });
after(async () => {
  clients.forEach((c) => c.close());
  await srv.stop();
});

test("connects: handshake fields, status hooks, uid is the client-id", async () => {
  const seen = [];
  const c = make(srv.url, { clientId: "node-client-1" });
  c.onStatus((s) => seen.push(s));
  assert.equal(c.status, "connecting");
  assert.equal(await c.waitConnected(WAIT_MS), true);
  assert.deepEqual(seen, ["connected"]);
  assert.equal(c.uid, "node-client-1");
  assert.equal(c.handshake.protocol, 1);
  assert.equal(c.first, true);
  assert.match(c.connId, /^[0-9a-f]{16}-\d+$/);
  c.close();
  assert.equal(c.status, "closed");
  await assert.rejects(c.request("test/add", [1]), { name: "ClientClosed", code: "closed" });
});

test("request/reply to the server: result, error codes, local timeout", async () => {
  const c = make(srv.url);
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.equal(await c.request("test/add", [1, 2, 39]), 42);
  await assert.rejects(c.request("test/missing", null), { name: "RemoteError", code: "no-handler" });
  await assert.rejects(c.request("test/fail", null), { name: "RemoteError", code: "handler-error" });
  await assert.rejects(c.request("test/add", "not numbers"), { code: "handler-error" });
  await assert.rejects(c.request("bad event id", 1), TypeError);
  // a reserved event the server answers with a null reply; then a local timeout
  assert.equal(await c.request("chsk/ws-ping"), null);
  await assert.rejects(c.request("sente-lite/nope", null), { code: "unknown-event" });
  c.close();
});

test("requests from the server: return value, Promise, throw, no handler", async () => {
  const c = make(srv.url);
  assert.ok(await c.waitConnected(WAIT_MS));
  c.on("test/double", (x) => x * 2);
  c.on("test/later", (x) => new Promise((r) => setTimeout(() => r({ later: x }), 20)));
  c.on("test/boom", () => { throw new RangeError("no"); });
  assert.deepEqual(await srv.cmd({ op: "request", event: "test/double", data: 21 }), { ok: true, result: 42 });
  assert.deepEqual(await srv.cmd({ op: "request", event: "test/later", data: "x" }), { ok: true, result: { later: "x" } });
  assert.deepEqual(await srv.cmd({ op: "request", event: "test/boom" }), { ok: false, code: "handler-error" });
  assert.deepEqual(await srv.cmd({ op: "request", event: "test/none" }), { ok: false, code: "no-handler" });
  assert.equal(c.stats().handlerErrors, 1);
  c.close();
});

test("pub/sub: server publishes 500 messages, all arrive in offset order; publish with ack", async () => {
  const c = make(srv.url);
  const got = [];
  const answer = await c.subscribe("node/feed", (m) => got.push(m));
  assert.equal(answer.channelId, "node/feed");
  assert.equal(typeof answer.epoch, "string");
  const pub = await srv.cmd({ op: "publish", channel: "node/feed", count: 500 });
  await waitFor(() => got.length >= 500, "500 messages");
  assert.deepEqual(got.map((m) => m.data), [...Array(500).keys()]);
  assert.deepEqual(got.map((m) => m.offset), got.map((_, i) => answer.offset + i + 1));
  assert.equal(got[0].from, null);
  assert.equal(pub.offset, answer.offset + 500);
  const acked = await c.publish("node/feed", { hello: "world" }, { ack: true });
  assert.deepEqual(Object.keys(acked).sort(), ["channelId", "delivered", "offset"]);
  assert.equal(acked.delivered, 1);
  await waitFor(() => got.length === 501, "own message back");
  assert.equal(got[500].from, c.uid);
  assert.equal(c.publish("node/feed", 1, { excludeSender: true }), undefined);
  await assert.rejects(c.subscribe("bad\u0001channel"), TypeError);
  await c.unsubscribe("node/feed");
  assert.deepEqual(c.subscriptions(), []);
  assert.equal(c.stats().channelGaps, 0);
  c.close();
});

test("server restart: reconnect with backoff, resubscribe, queued sends delivered; bounded queue", async () => {
  const c = make(srv.url, { maxPendingSends: 2 });
  const got = [];
  const statuses = [];
  c.onStatus((s) => statuses.push(s));
  const resubscribed = [];
  c.onRecovery((a) => resubscribed.push(a));
  await c.subscribe("node/restart", (m) => got.push(m.data));
  const firstServer = c.serverId;
  await srv.cmd({ op: "pause" });
  await waitFor(() => c.status === "reconnecting", "reconnecting");
  c.send("test/note", "q1");
  c.send("test/note", "q2");
  c.publish("node/restart", "q3");
  assert.throws(() => c.send("test/note", "q4"), { name: "SendQueueFull", code: "limit-exceeded" });
  assert.equal(c.stats().pendingSends, 2);
  assert.equal(c.stats().unackedPublishes, 1);  // the publish waits in the outbox, not the send queue
  await srv.cmd({ op: "resume" });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.notEqual(c.serverId, firstServer);
  await waitFor(() => resubscribed.length === 1, "resubscribe answer");
  assert.equal(resubscribed[0].channelId, "node/restart");
  await waitFor(() => got.includes("q3"), "the queued publish, delivered after the resubscribe");
  await srv.cmd({ op: "publish", channel: "node/restart", data: "after" });
  await waitFor(() => got.includes("after"), "message after restart");
  const notes = (await srv.cmd({ op: "events" })).notes;
  assert.deepEqual(notes.filter((n) => n === "q1" || n === "q2"), ["q1", "q2"]);
  assert.ok(statuses.indexOf("reconnecting") >= 0 && statuses[statuses.length - 1] === "connected");
  assert.ok(c.stats().reconnectAttempts >= 1);
  c.close();
});

test("heartbeat: pings are answered, so the server keeps the connection past 3 x heartbeat", async () => {
  const c = make(srv.url);
  assert.ok(await c.waitConnected(WAIT_MS));
  const connId = c.connId;
  const framesBefore = c.stats().framesIn;
  await new Promise((r) => setTimeout(r, 1500)); // 5 heartbeats of 300 ms: the span under test
  assert.ok(c.stats().framesIn - framesBefore >= 3, "pings arrived");
  assert.equal(c.connId, connId);
  assert.equal(c.stats().reconnectAttempts, 0);
  c.close();
});

test("dead server: silent for 2 x heartbeat + 1 s, the socket is dropped and the client reconnects", async () => {
  // A WebSocket server that sends the handshake and then nothing, not even pings.
  const fake = new WebSocket.WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => fake.on("listening", r));
  let accepted = 0;
  fake.on("connection", (sock) => {
    accepted++;
    sock.send(JSON.stringify(["chsk/handshake", ["u", null, { "conn-id": "x-" + accepted, "server-id": "x",
      "client-id": "c", protocol: 1, "heartbeat-ms": 200, "max-message-bytes": 1 << 20 }, accepted === 1]]));
  });
  try {
    const c = make(`ws://127.0.0.1:${fake.address().port}/chsk`);
    assert.ok(await c.waitConnected(WAIT_MS));
    const t0 = Date.now();
    await waitFor(() => accepted >= 2, "a second connection");
    const waited = Date.now() - t0;
    assert.ok(waited >= 1300, `dropped after ${waited} ms, before 2 x 200 + 1000`);
    assert.equal(c.stats().deadServerDetections, 1);
    c.close();
  } finally {
    fake.clients.forEach((s) => s.terminate());
    await new Promise((r) => fake.close(r));
  }
});

test("backoff: full jitter within [0, min(max, base * 2^n)]", () => {
  assert.equal(SenteLite.backoffDelay(3, 250, 10000, () => 0.999999) < 2000, true);
  assert.equal(SenteLite.backoffDelay(3, 250, 10000, () => 0.5), 1000);
  assert.equal(SenteLite.backoffDelay(40, 250, 10000, () => 1), 10000);
  assert.equal(SenteLite.backoffDelay(0, 250, 10000, () => 0), 0);
});

test("the served ES module works under Node too", async () => {
  const resp = await fetch(srv.url.replace("ws:", "http:").replace("/chsk", "/sente_lite.mjs"));
  assert.equal(resp.status, 200);
  const dir = mkdtempSync(join(tmpdir(), "sente-lite-mjs-"));
  try {
    const file = join(dir, "sente_lite.mjs");
    writeFileSync(file, await resp.text());
    const mod = await import(pathToFileURL(file).href);
    assert.equal(typeof mod.Client, "function");
    assert.equal(mod.default.Client, mod.Client);
    const c = new mod.Client(srv.url, { WebSocket, logger: null });
    clients.push(c);
    assert.ok(await c.waitConnected(WAIT_MS));
    assert.equal(await c.request("test/add", [2, 3]), 5);
    c.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("constructor without a WebSocket under Node says what to pass", () => {
  assert.throws(() => new SenteLite.Client("ws://127.0.0.1:1/chsk"), /options.WebSocket/);
});

test("a subscribe whose Promise is ignored causes no unhandled rejection when the client closes", async () => {
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  process.on("unhandledRejection", onUnhandled);
  try {
    const c = make("ws://127.0.0.1:9/chsk");  // nothing listens there: never connects
    c.subscribe("node/ignored", () => {});
    c.close();
    await new Promise((r) => setTimeout(r, 50));  // rejections are reported after the microtask queue drains
    assert.deepEqual(unhandled, []);
    await assert.rejects(c.subscribe("node/after-close"), { code: "closed" });
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
});

test("history feature: re-subscribe sends since {offset, epoch}; replayed duplicates are dropped", async () => {
  // A protocol-1.1 server stand-in: lists "history", answers subscribes, replays on request.
  const fake = new WebSocket.WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => fake.on("listening", r));
  const subscribes = [];
  const sockets = [];
  const msg = (offset) => JSON.stringify(["sente-lite/channel-msg",
    { "channel-id": "h/ch", data: offset, from: null, offset, epoch: "E1" }]);
  fake.on("connection", (sock) => {
    sockets.push(sock);
    sock.send(JSON.stringify(["chsk/handshake", ["u", null, { "conn-id": "h-" + sockets.length, "server-id": "h",
      "client-id": "c", protocol: 1, "heartbeat-ms": 5000, "max-message-bytes": 1 << 20, features: ["history"] },
      sockets.length === 1]]));
    sock.on("message", (raw) => {
      const [ev, data, cb] = JSON.parse(raw.toString());
      if (ev !== "sente-lite/subscribe") { return; }
      subscribes.push(data);
      if (!data.since) {
        sock.send(JSON.stringify(["chsk/reply", { "channel-id": "h/ch", offset: 0, epoch: "E1" }, cb]));
        [1, 2, 3].forEach((o) => sock.send(msg(o)));
      } else {
        sock.send(JSON.stringify(["chsk/reply", { "channel-id": "h/ch", offset: 5, epoch: "E1", recovered: true }, cb]));
        [3, 4, 5].forEach((o) => sock.send(msg(o)));  // 3 again: must be dropped
      }
    });
  });
  try {
    const got = [];
    const resubscribed = [];
    const c = make(`ws://127.0.0.1:${fake.address().port}/chsk`);
    c.onResubscribe((a) => resubscribed.push(a));
    await c.subscribe("h/ch", (m) => got.push(m.offset));
    await waitFor(() => got.length === 3, "first three messages");
    sockets[0].terminate();
    await waitFor(() => got.length === 5, "replayed messages");
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.deepEqual(subscribes, [{ "channel-id": "h/ch" }, { "channel-id": "h/ch", since: { offset: 3, epoch: "E1" } }]);
    assert.equal(resubscribed[0].recovered, true);
    assert.equal(c.stats().duplicatesDropped, 1);
    assert.equal(c.stats().channelGaps, 0);
    c.close();
  } finally {
    fake.clients.forEach((s) => s.terminate());
    await new Promise((r) => fake.close(r));
  }
});
