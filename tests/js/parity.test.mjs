// The Python client's promises kept by sente_lite.js against a real server: since, position(),
// onRecovery, persisted positions, the publish outbox and its bound (publishBlockMs).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, waitFor, client, WAIT_MS } from "./helpers.mjs";

let srv;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => { srv = await startServer(["--heartbeat-ms", "300"]); });
after(async () => {
  clients.forEach((c) => c.close());
  await srv.stop();
});

/** A Storage in memory (the shape of sessionStorage). */
function memoryStorage() {
  const m = new Map();
  return { m, getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => { m.set(k, String(v)); } };
}

test("subscribe with since replays what follows it; position(); onRecovery before the next message", async () => {
  const a = make(srv.url);
  const seen = [];
  await a.subscribe("par/since", (m) => seen.push(m.data));
  assert.equal(a.position("par/since").offset, 0);
  assert.equal(a.position("par/none"), null);
  await srv.cmd({ op: "publish", channel: "par/since", data: "m", count: 3 });
  await waitFor(() => seen.length === 3, "three messages");
  const at = a.position("par/since");
  assert.equal(at.offset, 3);
  const b = make(srv.url);
  const order = [];
  b.onRecovery((r) => order.push(["recovery", r]));
  const answer = await b.subscribe("par/since", (m) => order.push(["msg", m.offset]), { since: { offset: 1, epoch: at.epoch } });
  assert.equal(answer.recovered, true);
  await waitFor(() => order.length === 3, "the recovery and two replayed messages");
  assert.deepEqual(order.map((x) => x[0]), ["recovery", "msg", "msg"]);
  assert.deepEqual(order.slice(1).map((x) => x[1]), [2, 3]);
  assert.deepEqual(order[0][1], { channelId: "par/since", recovered: true, offset: 3, epoch: at.epoch,
                                  since: { offset: 1, epoch: at.epoch } });
  // a position in another epoch: told, nothing replayed
  const c = make(srv.url);
  const lost = [];
  c.onRecovery((r) => lost.push(r));
  const gone = await c.subscribe("par/since", null, { since: { offset: 1, epoch: "not-this-one" } });
  assert.deepEqual([gone.recovered, gone.reason], [false, "epoch-changed"]);
  assert.equal(lost.length, 1);
  assert.equal(c.stats().recoveryFailures, 1);
  assert.deepEqual(c.position("par/since"), { offset: 3, epoch: at.epoch });
});

test("since that is not {offset: integer >= 0, epoch: non-empty string} is a TypeError", async () => {
  const c = make(srv.url);
  for (const bad of [{ offset: -1, epoch: "e" }, { offset: 1.5, epoch: "e" }, { offset: 1, epoch: "" },
                     { offset: 1 }, { epoch: "e" }, "3", 3, [1, "e"], { offset: "1", epoch: "e" }]) {
    await assert.rejects(c.subscribe("par/bad", null, { since: bad }), TypeError, JSON.stringify(bad));
  }
  assert.deepEqual(c.subscriptions(), []);
});

test("persistPositions: a new client (a reloaded page) resumes every channel with recovered: true", async () => {
  const store = memoryStorage();
  const chs = ["par/p1", "par/p2"];
  const first = make(srv.url, { persistPositions: store });
  const got1 = [];
  await Promise.all(chs.map((ch) => first.subscribe(ch, (m) => got1.push([ch, m.data]))));
  for (const ch of chs) { await srv.cmd({ op: "publish", channel: ch, data: "before" }); }
  await waitFor(() => got1.length === 2, "first messages");
  first.close();  // writes the positions now
  for (const ch of chs) { await srv.cmd({ op: "publish", channel: ch, data: "missed" }); }
  const second = make(srv.url, { persistPositions: store });
  const got2 = [];
  const recoveries = [];
  second.onRecovery((r) => recoveries.push(r));
  const answers = await Promise.all(chs.map((ch) => second.subscribe(ch, (m) => got2.push([ch, m.data]))));
  assert.deepEqual(answers.map((a) => a.recovered), [true, true]);
  await waitFor(() => got2.length === 2, "missed messages");
  assert.deepEqual(got2.sort(), chs.map((ch) => [ch, "missed"]));
  assert.deepEqual(recoveries.map((r) => r.since.offset), [1, 1]);
  // unsubscribe forgets the channel's position
  await second.unsubscribe("par/p1");
  second.close();
  const kept = JSON.parse([...store.m.values()][0]);
  assert.deepEqual(Object.keys(kept), ["par/p2"]);
});

test("persistPositions: unreadable stored data is ignored; true without sessionStorage says what to pass", async () => {
  const store = memoryStorage();
  const probe = make(srv.url, { persistPositions: store });
  probe.close();
  const key = [...store.m.keys()][0];
  for (const junk of ["not json", "[1,2]", JSON.stringify({ "par/j": { offset: -3, epoch: "e" } }),
                      JSON.stringify({ "par/j": { offset: 1, epoch: 7 } }), "null"]) {
    store.m.set(key, junk);
    const c = make(srv.url, { persistPositions: store });
    const answer = await c.subscribe("par/j");
    assert.equal(answer.recovered, undefined, junk);  // a fresh subscribe: no since was sent
    c.close();
  }
  assert.throws(() => client(srv.url, { persistPositions: true }), /sessionStorage/);
  assert.throws(() => client(srv.url, { persistPositions: "yes" }), /persistPositions must be/);
});

test("outbox bound: without ack SendQueueFull at once; with ack it waits for room (publishBlockMs) and wakes on acks", async () => {
  const c = make(srv.url, { maxUnackedPublishes: 3, publishBlockMs: WAIT_MS });
  const got = [];
  await c.subscribe("par/bound", (m) => got.push(m.data));
  await srv.cmd({ op: "pause" });
  await waitFor(() => c.status === "reconnecting", "reconnecting");
  c.publish("par/bound", 0);
  c.publish("par/bound", 1);
  const third = c.publish("par/bound", 2, { ack: true });
  const t0 = Date.now();
  assert.throws(() => c.publish("par/bound", "x"), { name: "SendQueueFull", code: "limit-exceeded" });
  await assert.rejects(c.publish("par/bound", "y", { ack: true, blockMs: 0 }), { name: "SendQueueFull" });
  assert.ok(Date.now() - t0 < 1000, "raised at once");
  const blocked = c.publish("par/bound", 3, { ack: true });  // waits for room
  let settled = false;
  blocked.then(() => { settled = true; }, () => { settled = true; });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(settled, false);
  assert.equal(c.stats().unackedPublishes, 3);
  await srv.cmd({ op: "resume" });
  assert.equal((await third).delivered, 1);
  const ack = await blocked;
  assert.equal(ack.channelId, "par/bound");
  await waitFor(() => got.length === 4, "all four publishes");
  assert.deepEqual(got, [0, 1, 2, 3]);
  assert.equal(c.stats().unackedPublishOverflows, 2);
});

test("outbox bound with a dead server: a blocked publish rejects after publishBlockMs, saying why", async () => {
  const c = make(srv.url, { maxUnackedPublishes: 1, publishBlockMs: 300 });
  assert.ok(await c.waitConnected(WAIT_MS));
  await srv.cmd({ op: "pause" });
  try {
    await waitFor(() => c.status === "reconnecting", "reconnecting");
    c.publish("par/dead", 1);
    const t0 = Date.now();
    await assert.rejects(c.publish("par/dead", 2, { ack: true }), (e) => {
      assert.equal(e.name, "SendQueueFull");
      assert.match(e.message, /maxUnackedPublishes=1.*waited 300 ms/);
      return true;
    });
    assert.ok(Date.now() - t0 >= 250);
    c.close();
    assert.equal(c.stats().unackedPublishes, 0);
  } finally {
    await srv.cmd({ op: "resume" });
  }
});
