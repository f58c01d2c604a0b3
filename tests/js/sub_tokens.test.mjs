// Subscription tokens (protocol section 16) of sente_lite.js against a real server: a channel of
// namespace "room" needs a JWT for it; subscribe(ch, fn, {token, onTokenRefused}) sends it, a
// function's token is refreshed over the open socket with sente-lite/sub-refresh, the expiry
// notice ends that channel only, and a reconnect resubscribes with a fresh token.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, client, signJwt, waitFor, WAIT_MS } from "./helpers.mjs";

const KEY = "node-sub-token-secret-of-32-bytes-or-more";
/** Subscription tokens live this long in the refresh tests: three refreshes fit in ~5 s. */
const SHORT_TTL_S = 2;
let srv;
const clients = [];
function make(options) { const c = client(srv.url, options); clients.push(c); return c; }

/** An HS256 JWT for `sub` living `ttl` seconds (with `channel`: a subscription token for it). */
function mint(sub, ttl, channel = undefined) { return signJwt({ sub, channel }, ttl, KEY); }

async function connected(uid) {
  const c = make({ token: mint(uid, 60) });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.ok(c.handshake.features.includes("sub-token"));
  return c;
}

before(async () => { srv = await startServer(["--jwt-key", KEY, "--heartbeat-ms", "1000", "--sub-token"]); });
after(async () => { clients.forEach((c) => c.close()); await srv.stop(); });

test("a channel that needs a token: refused without one, or with another sub's", async () => {
  const c = await connected("alice");
  await assert.rejects(c.subscribe("room:1"), { name: "RemoteError", code: "invalid-token" });
  const refused = [];
  await assert.rejects(c.subscribe("room:1", null, { token: mint("bob", 60, "room:1"),
    onTokenRefused: (ch, err) => refused.push([ch, err.code]) }), { code: "forbidden" });
  assert.deepEqual(refused, [["room:1", "forbidden"]]);
  await assert.rejects(c.subscribe("room:2", null, { token: () => null,
    onTokenRefused: async (ch, err) => { refused.push([ch, err.code]); } }), { code: "token-refused" });
  assert.deepEqual(refused[1], ["room:2", "token-refused"]);
  await assert.rejects(c.subscribe("room:3", null, { token: 42 }), TypeError);
  assert.deepEqual(c.subscriptions(), []);
  assert.equal(c.stats().subTokenRefused, 2);
});

test("three refreshes with 2 s tokens: no reconnect, no message lost", async () => {
  const c = await connected("carol");
  const minted = [];
  const got = [];
  const source = async () => { minted.push(mint("carol", SHORT_TTL_S, "room:s")); return minted.at(-1); };
  await c.subscribe("room:s", (m) => got.push(m.data), { token: source });
  const connId = c.connId;
  let sent = 0;
  const deadline = Date.now() + WAIT_MS;
  while (c.stats().subTokenRefreshes < 3) {
    assert.ok(Date.now() < deadline, JSON.stringify(c.stats()));
    await srv.cmd({ op: "publish", channel: "room:s", data: sent });
    sent++;
    await new Promise((r) => setTimeout(r, 20));  // a steady stream while the tokens are refreshed
  }
  await waitFor(() => got.length === sent, "every message delivered");
  assert.deepEqual(got, Array.from({ length: sent }, (_, i) => i));
  assert.equal(c.connId, connId);
  assert.equal(c.stats().reconnectAttempts, 0);
  assert.equal(c.stats().subTokenRefreshFailures, 0);
  assert.ok(minted.length >= 4);
  const { stats } = await srv.cmd({ op: "stats" });
  assert.equal(stats.sub_token_expired, 0);
});

test("without a refresh the expiry notice ends that channel only", async () => {
  const c = await connected("dave");
  const refused = [];
  const got = [];
  await c.subscribe("room:x", null, { token: mint("dave", SHORT_TTL_S, "room:x"),
    onTokenRefused: (ch, err) => refused.push([ch, err.code]) });
  await c.subscribe("room:y", (m) => got.push(m.data), { token: mint("dave", 60, "room:y") });
  const connId = c.connId;
  await waitFor(() => refused.length, "the expiry notice");
  assert.deepEqual(refused, [["room:x", "token-expired"]]);
  assert.deepEqual(c.subscriptions(), ["room:y"]);
  assert.equal(c.connId, connId);
  assert.equal(c.stats().subTokenExpired, 1);
  await srv.cmd({ op: "publish", channel: "room:y", data: "still here" });
  await waitFor(() => got.length === 1, "room:y's message");
  assert.deepEqual(got, ["still here"]);
});

test("a reconnect resubscribes with a fresh token from the function", async () => {
  const c = await connected("erin");
  const minted = [];
  const got = [];
  const source = () => { minted.push(mint("erin", 60 + minted.length, "room:r")); return minted.at(-1); };
  await c.subscribe("room:r", (m) => got.push(m.data), { token: source });
  const first = c.connId;
  await srv.cmd({ op: "disconnect-user", uid: "erin" });
  await waitFor(() => c.connected && c.connId !== first, "a reconnect");
  await waitFor(() => minted.length === 2, "a second token");
  assert.notEqual(minted[0], minted[1]);
  const deadline = Date.now() + WAIT_MS;
  while (!got.length) {  // published until the resubscribe (with the fresh token) is in place
    assert.ok(Date.now() < deadline, "no delivery after the resubscribe");
    await srv.cmd({ op: "publish", channel: "room:r", data: "x" });
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(c.subscriptions(), ["room:r"]);
  assert.equal(c.stats().subTokenRefused, 0);
});

test("a function that gives no token at a refresh ends the channel with an unsubscribe", async () => {
  const c = await connected("fay");
  const expiredBefore = (await srv.cmd({ op: "stats" })).stats.sub_token_expired;
  let calls = 0;
  const refused = [];
  await c.subscribe("room:f", null, { token: () => (++calls === 1 ? mint("fay", SHORT_TTL_S, "room:f") : null),
    onTokenRefused: (ch, err) => refused.push([ch, err.code]) });
  await waitFor(() => refused.length, "the refusal told");
  assert.deepEqual(refused, [["room:f", "token-refused"]]);
  assert.deepEqual(c.subscriptions(), []);
  assert.equal(calls, 2);
  const deadline = Date.now() + WAIT_MS;
  while ((await srv.cmd({ op: "subscribers", channel: "room:f" })).count !== 0) {  // the server's unsubscribe
    assert.ok(Date.now() < deadline, "the channel is still subscribed on the server");
    await new Promise((r) => setTimeout(r, 50));
  }
  const { stats } = await srv.cmd({ op: "stats" });
  assert.equal(stats.sub_token_expired, expiredBefore);  // ended by the unsubscribe, not at expiry
});
