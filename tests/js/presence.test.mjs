// Presence and join/leave (feature "presence") of sente_lite.js against a real server.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

let srv;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => { srv = await startServer(["--presence"]); });
after(async () => {
  clients.forEach((c) => c.close());
  await srv.stop();
});

test("presence, presenceStats and onJoin/onLeave in order with messages", async () => {
  const a = make(srv.url, { clientId: "js-a" });
  const b = make(srv.url, { clientId: "js-b" });
  assert.ok(await a.waitConnected(WAIT_MS) && await b.waitConnected(WAIT_MS));
  assert.ok(a.handshake.features.includes("presence"));
  const seen = [];
  await a.subscribe("room:1", (m) => seen.push(["msg", m.data]), {
    onJoin: (ch) => seen.push(["join", ch.member.clientId]),
    onLeave: (ch) => seen.push(["leave", ch.member.clientId]),
  });
  await b.subscribe("room:1");
  await b.publish("room:1", "hi", { ack: true });
  const members = await a.presence("room:1");
  assert.deepEqual(members.map((m) => m.clientId).sort(), ["js-a", "js-b"]);
  assert.deepEqual(members.map((m) => m.connId).sort(), [a.connId, b.connId].sort());
  assert.deepEqual(await b.presenceStats("room:1"), { members: 2, users: 2 });
  await b.unsubscribe("room:1");
  await waitFor(() => seen.length === 4, "b's leave");
  assert.deepEqual(seen, [["join", "js-a"], ["join", "js-b"], ["msg", "hi"], ["leave", "js-b"]]);
  await assert.rejects(b.presence("room:1"), { name: "RemoteError", code: "forbidden" });
  await a.subscribe("open:1");
  await assert.rejects(a.presence("open:1"), { name: "RemoteError", code: "forbidden" });
  await assert.rejects(a.presence(""), TypeError);
  await assert.rejects(a.subscribe("room:2", null, { onJoin: 3 }), TypeError);
});
