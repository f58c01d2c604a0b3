// Bytes as bytes (protocol section 10): sente_lite.js on JSON and MessagePack connections
// against a real sente_lite server and a Python client of it. A Uint8Array goes in, a
// Uint8Array (or, in Python, bytes) comes out, whatever packer each side uses.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

const PACKERS = ["json", "msgpack"];
let srv;
const clients = [];
async function make(options) {
  const c = client(srv.url, options);
  clients.push(c);
  assert.ok(await c.waitConnected(WAIT_MS));
  return c;
}
const b64 = (bytes) => Buffer.from(bytes).toString("base64");
const tagged = (bytes) => ({ $bytes: b64(bytes) });
const u8 = (...xs) => new Uint8Array(xs);

before(async () => { srv = await startServer(); });
after(async () => {
  clients.forEach((c) => c.close());
  await srv.stop();
});

for (const packer of PACKERS) {
  test(`${packer}: bytes=1 is asked and echoed; Uint8Array in requests arrives in Python as bytes and comes back as Uint8Array`, async () => {
    const c = await make({ packer });
    assert.match(c._lastUrl, /[?&]bytes=1(&|$)/);
    assert.equal(c.handshake.bytes, true);
    assert.ok(c.handshake.features.includes("bytes"));
    const data = { img: u8(0, 1, 254, 255), empty: u8(), list: [Buffer.from("hi"), { deep: [u8(7)] }], text: "t" };
    assert.deepEqual(await c.request("test/types", data),
                     { img: "bytes", empty: "bytes", list: ["bytes", { deep: ["bytes"] }], text: "str" });
    const back = await c.request("test/echo", data);
    assert.deepEqual(back, { data: { img: u8(0, 1, 254, 255), empty: u8(), list: [u8(104, 105), { deep: [u8(7)] }], text: "t" },
                             packer });
    assert.ok(back.data.img instanceof Uint8Array && !(back.data.list[0] instanceof Buffer));
    assert.equal(c.stats().badFramesFromServer, 0);
  });

  test(`${packer}: the server's requests and pushes carry bytes to the page and back`, async () => {
    const c = await make({ packer, clientId: "node-bytes-" + packer });
    const seen = [];
    c.on("test/ask", (data) => { seen.push(data); return { back: data.q, mine: u8(9, 9) }; });
    const answer = await srv.cmd({ op: "request", event: "test/ask", data: { q: tagged(u8(1, 2)) }, uid: c.uid });
    assert.deepEqual(answer, { ok: true, result: { back: tagged(u8(1, 2)), mine: tagged(u8(9, 9)) } });
    assert.deepEqual(seen, [{ q: u8(1, 2) }]);
  });
}

test("channels: Uint8Array from JSON and MessagePack pages reaches a Python subscriber as bytes, and Python's bytes reach both pages", async () => {
  const pages = {};
  const got = { json: [], msgpack: [] };
  for (const packer of PACKERS) {
    pages[packer] = await make({ packer });
    await pages[packer].subscribe("bytes-ch", (m) => got[packer].push(m.data));
  }
  assert.equal((await srv.cmd({ op: "py-subscribe", channel: "bytes-ch", packer: "msgpack" })).ok, true);
  await pages.json.publish("bytes-ch", { from: "json", b: u8(1), e: u8() }, { ack: true });
  await pages.msgpack.publish("bytes-ch", { from: "msgpack", b: u8(2), l: [u8(3, 4)] }, { ack: true });
  assert.equal((await srv.cmd({ op: "py-publish", channel: "bytes-ch", data: [tagged(u8(0, 255)), "py"] })).ok, true);
  const want = [{ from: "json", b: u8(1), e: u8() }, { from: "msgpack", b: u8(2), l: [u8(3, 4)] }, [u8(0, 255), "py"]];
  for (const packer of PACKERS) {
    await waitFor(() => got[packer].length === 3, packer + " got all three");
    assert.deepEqual(got[packer], want, packer);
  }
  const answer = await srv.cmd({ op: "py-got" });
  assert.deepEqual(answer.got.map((m) => m.data), [
    { from: "json", b: tagged(u8(1)), e: tagged(u8()) },  // the helper writes Python bytes as the tagged form
    { from: "msgpack", b: tagged(u8(2)), l: [tagged(u8(3, 4))] },
    [tagged(u8(0, 255)), "py"],
  ]);
});

test("1 MB: fits a MessagePack frame under the default 1 MiB limit, not a JSON one (base64): refused before sending", async () => {
  const blob = new Uint8Array(1000000).map((_, i) => (i * 7) & 0xff);
  const pages = { json: await make({ packer: "json" }), msgpack: await make({ packer: "msgpack" }) };
  const got = [];
  await pages.json.subscribe("big", (m) => got.push(m.data));
  assert.throws(() => pages.json.publish("big", blob), { code: "too-large", message: /max-message-bytes \(1048576\).*base64/ });
  assert.throws(() => pages.json.send("test/note", blob), { code: "too-large" });
  const ack = await pages.msgpack.publish("big", blob, { ack: true, timeoutMs: WAIT_MS });
  assert.equal(ack.offset, 1);
  await waitFor(() => got.length === 1, "the 1 MB message on the JSON page");
  assert.ok(got[0] instanceof Uint8Array && got[0].length === blob.length);
  assert.deepEqual(got[0], blob);
});

test("an object whose only key is $bytes is refused on either packer; with a second key it is an object", async () => {
  for (const packer of PACKERS) {
    const c = await make({ packer });
    assert.throws(() => c.send("test/note", { $bytes: "AA==" }), { name: "TypeError", message: /tagged form/ });
    assert.throws(() => c.publish("x", [{ k: { $bytes: 1 } }]), { name: "TypeError", message: /tagged form/ });
    assert.deepEqual(await c.request("test/echo", { $bytes: "AA==", other: 1 }), { data: { $bytes: "AA==", other: 1 }, packer });
  }
});
