// The history API (feature "history-api") and server-side subscriptions (feature
// "server-subs") of sente_lite.js against a real server.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

let srv;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => { srv = await startServer(); });
after(async () => {
  clients.forEach((c) => c.close());
  await srv.stop();
});

test("history pages both ways, with next", async () => {
  const c = make(srv.url, { clientId: "js-h" });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.ok(c.handshake.features.includes("history-api"));
  await srv.cmd({ op: "publish", channel: "h", count: 5 });
  const first = await c.history("h", { limit: 2 });
  assert.deepEqual(first.publications.map((x) => x.offset), [1, 2]);
  assert.deepEqual(first.publications.map((x) => x.data), [0, 1]);
  const second = await c.history("h", { limit: 2, page: first.next });
  assert.deepEqual(second.publications.map((x) => x.offset), [3, 4]);
  const back = await c.history("h", { limit: 3, reverse: true });
  assert.deepEqual(back.publications.map((x) => x.offset), [5, 4, 3]);
  const rest = await c.history("h", { limit: 3, reverse: true, page: back.next });
  assert.deepEqual(rest.publications.map((x) => x.offset), [2, 1]);
  assert.equal(rest.next, null);
  await assert.rejects(c.history("h", { limit: 0 }), TypeError);
});

test("a server subscription is told, delivered, listed, and taken back", async () => {
  const c = make(srv.url, { clientId: "js-s" });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.ok(c.handshake.features.includes("server-subs"));
  const seen = [];
  c.onServerChannel((m) => seen.push([m.channelId, m.data]));
  assert.deepEqual(await srv.cmd({ op: "server-subscribe", target: c.connId, channel: "given" }),
                   { ok: true, count: 1 });
  await waitFor(() => c.serverSubscriptions().length === 1, "the server-sub");
  assert.deepEqual(c.subscriptions(), ["given"]);
  await srv.cmd({ op: "publish", channel: "given", data: "hello" });
  await waitFor(() => seen.length === 1, "the message");
  assert.deepEqual(seen, [["given", "hello"]]);
  await srv.cmd({ op: "server-unsubscribe", target: c.connId, channel: "given" });
  await waitFor(() => c.subscriptions().length === 0, "the server-unsub");
  assert.deepEqual(c.serverSubscriptions(), []);
});
