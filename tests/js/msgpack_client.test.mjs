// sente_lite.js with packer "msgpack" (and batch) against a real sente_lite server, and
// against a scripted `ws` server for the frames a real server never sends.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { SenteLite, WebSocket, startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

const { encode } = SenteLite.msgpack;
let srv, bulk;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => {
  srv = await startServer(["--heartbeat-ms", "300"]);
  // For the batch tests: room for 10 MB queued per connection, and the default heartbeat
  // (5 s), so a client that stops reading for a while is not taken for dead by either side.
  bulk = await startServer(["--max-queued-bytes", String(64 << 20)]);
});
after(async () => {
  clients.forEach((c) => c.close());
  await Promise.all([srv.stop(), bulk.stop()]);
});

/** Every type at its edges, as the server's msgpack package has to read and write it. */
const EVERY_TYPE = {
  nil: null, yes: true, no: false,
  ints: [0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1,
         -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53 - 1)],
  floats: [1.5, -0.1, 1e300, 5e-324, 2 ** 53],
  strs: ["", "x".repeat(31), "x".repeat(32), "x".repeat(255), "x".repeat(256), "x".repeat(65536),
         "é日本😀𝄞", "ключ"],
  arrays: [[], Array.from({ length: 15 }, (_, i) => i), Array.from({ length: 16 }, (_, i) => i)],
  maps: [{}, Object.fromEntries(Array.from({ length: 16 }, (_, i) => ["k" + i, i])), { "😀": { "": [null] } }],
};

test("msgpack: handshake echoes the packer, URL and binaryType are set, requests and errors work", async () => {
  const c = make(srv.url, { packer: "msgpack" });
  assert.equal(c.packer, "msgpack");
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.equal(c.handshake.packer, "msgpack");
  assert.equal(c._ws.binaryType, "arraybuffer");
  assert.match(c._lastUrl, /[?&]packer=msgpack(&|$)/);
  assert.equal(await c.request("test/add", [1, 2, 39]), 42);
  assert.deepEqual(await c.request("test/echo", EVERY_TYPE), { data: EVERY_TYPE, packer: "msgpack" });
  await assert.rejects(c.request("test/missing", null), { name: "RemoteError", code: "no-handler" });
  await assert.rejects(c.request("test/fail", null), { name: "RemoteError", code: "handler-error" });
  assert.equal(await c.request("chsk/ws-ping"), null);
  assert.throws(() => c.send("test/note", { big: 1n }), { name: "TypeError", message: /MessagePack-encodable/ });
  const json = make(srv.url);
  assert.ok(await json.waitConnected(WAIT_MS));
  assert.equal(json.packer, "json");
  assert.equal(json.handshake.packer, undefined);
  assert.doesNotMatch(json._lastUrl, /packer=/);
  assert.deepEqual(await json.request("test/echo", EVERY_TYPE), { data: EVERY_TYPE, packer: "json" });
  assert.equal(c.stats().badFramesFromServer, 0);
  c.close();
  json.close();
});

test("msgpack: requests from the server are answered in MessagePack", async () => {
  const c = make(srv.url, { packer: "msgpack", clientId: "node-mp-answers" });
  assert.ok(await c.waitConnected(WAIT_MS));
  c.on("test/double", (x) => x * 2);
  c.on("test/echo-back", (x) => Promise.resolve({ back: x }));
  c.on("test/boom", () => { throw new RangeError("no"); });
  const ask = (event, data) => srv.cmd({ op: "request", event, data, uid: c.uid });
  assert.deepEqual(await ask("test/double", 21), { ok: true, result: 42 });
  assert.deepEqual(await ask("test/echo-back", EVERY_TYPE.strs), { ok: true, result: { back: EVERY_TYPE.strs } });
  assert.deepEqual(await ask("test/boom"), { ok: false, code: "handler-error" });
  assert.deepEqual(await ask("test/none"), { ok: false, code: "no-handler" });
  c.close();
});

test("msgpack: pub/sub mixed with a JSON JavaScript client and a Python JSON client", async () => {
  const mp = make(srv.url, { packer: "msgpack" });
  const js = make(srv.url);
  const gotMp = [], gotJs = [];
  await mp.subscribe("mixed/room", (m) => gotMp.push(m));
  await js.subscribe("mixed/room", (m) => gotJs.push(m));
  const py = await srv.cmd({ op: "py-subscribe", channel: "mixed/room" });
  const acked = await mp.publish("mixed/room", { from: "mp", every: EVERY_TYPE }, { ack: true });
  assert.equal(acked.delivered, 3);
  await js.publish("mixed/room", { from: "js" }, { ack: true });
  await srv.cmd({ op: "py-publish", channel: "mixed/room", data: { from: "py" } });
  await srv.cmd({ op: "publish", channel: "mixed/room", data: { from: "server" } });
  await waitFor(() => gotMp.length === 4 && gotJs.length === 4, "4 messages at each JavaScript client");
  for (const got of [gotMp, gotJs]) {
    assert.deepEqual(got.map((m) => m.data.from), ["mp", "js", "py", "server"]);
    assert.deepEqual(got.map((m) => m.from), [mp.uid, js.uid, py.uid, null]);
    assert.deepEqual(got[0].data.every, EVERY_TYPE);
    assert.equal(got[3].offset, got[0].offset + 3);
  }
  let fromPy = [];
  for (const deadline = Date.now() + WAIT_MS; fromPy.length < 4 && Date.now() < deadline;) {
    fromPy = (await srv.cmd({ op: "py-got" })).got;
    if (fromPy.length < 4) { await new Promise((r) => setTimeout(r, 20)); }
  }
  assert.deepEqual(fromPy.map((m) => m.data.from), ["mp", "js", "py", "server"]);
  assert.deepEqual(fromPy[0].data.every, EVERY_TYPE);
  assert.equal(mp.stats().badFramesFromServer, 0);
  mp.close();
  js.close();
});

test("msgpack: heartbeat pings arrive as MessagePack and are answered; no bad frames", async () => {
  const c = make(srv.url, { packer: "msgpack" });
  assert.ok(await c.waitConnected(WAIT_MS));
  const connId = c.connId;
  const before = c.stats().framesIn;
  await new Promise((r) => setTimeout(r, 1500)); // 5 heartbeats of 300 ms
  assert.ok(c.stats().framesIn - before >= 3, "pings arrived");
  assert.equal(c.stats().badFramesFromServer, 0);
  assert.equal(c.connId, connId);
  assert.equal(c.stats().reconnectAttempts, 0);
  c.close();
});

for (const packer of ["msgpack", "json"]) {
  test(`batch (${packer}): a backed-up client gets chsk/batch frames and reads every message in order`, async () => {
    const c = make(bulk.url, { packer, batch: true });
    assert.ok(await c.waitConnected(WAIT_MS));
    assert.equal(c.handshake.batch, true);
    assert.match(c._lastUrl, /[?&]batch=1(&|$)/);
    const got = [];
    const answer = await c.subscribe("batch/" + packer, (m) => got.push(m));
    c._ws.pause(); // the npm ws socket stops reading: the server's queue for it grows
    const n = 5000; // 10 MB: more than the socket buffers hold
    await bulk.cmd({ op: "publish", channel: "batch/" + packer, data: "x".repeat(2000), count: n });
    c._ws.resume();
    await waitFor(() => got.length >= n, `${n} messages`);
    assert.deepEqual(got.map((m) => m.offset), got.map((_, i) => answer.offset + i + 1));
    const stats = c.stats();
    assert.ok(stats.batchesIn >= 1, "at least one batch");
    assert.ok(stats.framesIn < n, `${stats.framesIn} frames carried ${n} messages`);
    assert.equal(stats.badFramesFromServer, 0);
    assert.equal(stats.channelGaps, 0);
    assert.equal(stats.reconnectAttempts, 0);
    c.close();
  });
}

test("msgpack: a server without the msgpack package refuses with 400, and the client stops", async () => {
  const plain = await startServer(["--no-msgpack"]);
  try {
    const c = make(plain.url, { packer: "msgpack" });
    await assert.rejects(c.waitConnected(WAIT_MS), { name: "ConnectRefused", status: 400, message: /msgpack/ });
    assert.equal(c.status, "closed");
    assert.equal(c.stats().reconnectAttempts, 0);
    const json = make(plain.url);
    assert.ok(await json.waitConnected(WAIT_MS));
    json.close();
  } finally {
    await plain.stop();
  }
});

test("options: an unknown packer is a TypeError", () => {
  assert.throws(() => new SenteLite.Client("ws://127.0.0.1:1/chsk", { WebSocket, packer: "cbor" }),
                { name: "TypeError", message: /packer must be "json" or "msgpack"/ });
  assert.equal(SenteLite.DEFAULTS.packer, "json");
  assert.equal(SenteLite.DEFAULTS.batch, false);
});

/** A scripted WebSocket server: `script(sock, frames)` runs per connection; frames the client sent are kept. */
async function scripted(script) {
  const server = new WebSocket.WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => server.on("listening", r));
  const received = [];
  const urls = [];
  server.on("connection", (sock, req) => {
    urls.push(req.url);
    sock.on("message", (data, isBinary) => received.push({ data, isBinary }));
    script(sock);
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}/chsk`, received, urls,
    async close() {
      server.clients.forEach((s) => s.terminate());
      await new Promise((r) => server.close(r));
    },
  };
}

const HANDSHAKE = ["chsk/handshake", ["u", null, { "conn-id": "x-1", "server-id": "x", protocol: 1,
                                              "heartbeat-ms": 5000, packer: "msgpack" }, true]];
const msg = (offset, data) => ["sente-lite/channel-msg", { "channel-id": "ch", data, from: null, offset, epoch: "e" }];

test("msgpack: frames go out binary; a text frame, bin data or junk from the server is a bad frame", async () => {
  const fake = await scripted((sock) => {
    sock.send(encode(HANDSHAKE));
    sock.on("message", (data, isBinary) => {
      if (!isBinary) { return; }
      const frame = SenteLite.msgpack.decode(data);
      if (frame[0] !== "sente-lite/subscribe") { return; }
      sock.send(encode(["chsk/reply", { "channel-id": "ch", offset: 0, epoch: "e" }, frame[2]]));
      sock.send(JSON.stringify(msg(1, "as text")));                            // text: refused
      sock.send(encode(msg(2, null)).subarray(0, 40));                         // truncated
      sock.send(Buffer.from("93 ad 6170702f736f6d657468696e67 c40101 c0".replace(/ /g, ""), "hex")); // ["app/something", <bin>, nil]
      sock.send(encode({ not: "a frame" }));
      sock.send(encode(msg(3, "fine")));
    });
  });
  try {
    const c = make(fake.url, { packer: "msgpack" });
    const got = [];
    await c.subscribe("ch", (m) => got.push(m.data));
    await waitFor(() => got.length === 1, "the good message");
    assert.deepEqual(got, ["fine"]);
    assert.equal(c.stats().badFramesFromServer, 4);
    assert.match(fake.urls[0], /[?&]packer=msgpack(&|$)/);
    assert.doesNotMatch(fake.urls[0], /batch=/);
    assert.ok(fake.received.length >= 1 && fake.received.every((f) => f.isBinary));
    c.close();
  } finally {
    await fake.close();
  }
});

test("msgpack: a server that answers in JSON text never connects the client (and says why)", async () => {
  const fake = await scripted((sock) => { sock.send(JSON.stringify(HANDSHAKE)); });
  const warnings = [];
  try {
    const c = make(fake.url, { packer: "msgpack", connectTimeoutMs: 300, logger: { warn: (...a) => warnings.push(a.join(" ")), error() {} } });
    assert.equal(await c.waitConnected(200), false);
    await waitFor(() => c.stats().badFramesFromServer >= 1, "a bad frame");
    assert.match(warnings[0], /text frame on a msgpack connection \(a server older than packer=msgpack\?\)/);
    c.close();
  } finally {
    await fake.close();
  }
});

for (const packer of ["msgpack", "json"]) {
  test(`batch (${packer}): every frame of a chsk/batch is handled in order; bad or nested ones are counted`, async () => {
    const pack = packer === "msgpack" ? encode : JSON.stringify;
    const fake = await scripted((sock) => {
      sock.send(pack(packer === "msgpack" ? HANDSHAKE : [HANDSHAKE[0], [...HANDSHAKE[1].slice(0, 2), { ...HANDSHAKE[1][2], packer: undefined }, true]]));
      sock.on("message", (data) => {
        const frame = packer === "msgpack" ? SenteLite.msgpack.decode(data) : JSON.parse(data.toString());
        if (frame[0] === "sente-lite/subscribe") {
          sock.send(pack(["chsk/batch", [
            ["chsk/reply", { "channel-id": "ch", offset: 0, epoch: "e" }, frame[2]],
            msg(1, "a"),
            ["app/note", { n: 1 }],
            "not a frame",
            ["chsk/batch", [msg(9, "nested")]],
            msg(2, "b"),
            ["chsk/ws-ping"],
            ["app/ask", 20, "srv-1"],
          ]]));
          sock.send(pack(["chsk/batch", "not a list"]));
        }
      });
    });
    try {
      const c = make(fake.url, { packer, batch: true });
      const got = [], notes = [];
      c.on("app/note", (d) => notes.push(d));
      c.on("app/ask", (x) => x + 1);
      assert.deepEqual(await c.subscribe("ch", (m) => got.push(m.data)), { channelId: "ch", offset: 0, epoch: "e" });
      await waitFor(() => fake.received.length >= 3, "pong and reply");
      assert.deepEqual(got, ["a", "b"]);
      assert.deepEqual(notes, [{ n: 1 }]);
      await waitFor(() => c.stats().badFramesFromServer === 3, "3 bad frames");
      assert.equal(c.stats().batchesIn, 1);
      const sent = fake.received.map((f) => (packer === "msgpack" ? SenteLite.msgpack.decode(f.data) : JSON.parse(f.data.toString())));
      assert.deepEqual(sent.slice(1), [["chsk/ws-pong"], ["chsk/reply", 21, "srv-1"]]);
      assert.ok(fake.received.every((f) => f.isBinary === (packer === "msgpack")));
      assert.match(fake.urls[0], /[?&]batch=1(&|$)/);
      c.close();
    } finally {
      await fake.close();
    }
  });
}
