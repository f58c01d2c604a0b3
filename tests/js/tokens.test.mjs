// JWT connection tokens (protocol section 12): the token travels in the subprotocol offer
// (not the URL), is refreshed over the open socket before it expires, a 4002 close brings a
// reconnect with a fresh token, and a refusing token source stops the client for good.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { startServer, client, signJwt, waitFor, WAIT_MS } from "./helpers.mjs";

const KEY = "node-jwt-secret-of-32-bytes-or-more";
/** Tokens live this long: a refresh comes about 0.75 s before exp. */
const SHORT_TTL_S = 3;
let srv;
const clients = [];
function make(options) { const c = client(srv.url, options); clients.push(c); return c; }

/** An HS256 JWT for `sub` living `ttl` seconds, signed with `key` (node:crypto, as a server's issuer would). */
function mint(sub, ttl, key = KEY) { return signJwt({ sub }, ttl, key); }

before(async () => { srv = await startServer(["--jwt-key", KEY, "--heartbeat-ms", "1000"]); });
after(async () => { clients.forEach((c) => c.close()); await srv.stop(); });

test("the token goes in the subprotocol offer and is refreshed without a reconnect", async () => {
  const got = [];
  const c = make({ token: () => { got.push(mint("alice", SHORT_TTL_S)); return Promise.resolve(got.at(-1)); } });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.equal(c.uid, "alice");
  assert.ok(c.handshake.features.includes("refresh"));
  assert.equal(typeof c.handshake["token-exp"], "number");
  assert.ok(!c._lastUrl.includes("token="), "the token stays out of the URL");
  const connId = c.connId;
  await waitFor(() => c.stats().tokenRefreshes >= 2, "two refreshes", WAIT_MS);
  assert.equal(c.connId, connId);
  assert.equal(c.stats().reconnectAttempts, 0);
  assert.equal(c.stats().tokenRefreshFailures, 0);
  assert.ok(got.length >= 3);
  assert.equal(await c.request("test/add", [1, 2]), 3);
});

test("tokenVia query still sends ?token=", async () => {
  const c = make({ token: mint("bob", 60), tokenVia: "query" });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.equal(c.uid, "bob");
  assert.ok(c._lastUrl.includes("token="));
  assert.throws(() => client(srv.url, { tokenVia: "header" }), TypeError);
});

test("an expired token is refused with 401 (the probe carries the token)", async () => {
  const c = make({ token: mint("carol", -5) });
  await assert.rejects(c.waitConnected(WAIT_MS), (err) => {
    assert.equal(err.name, "ConnectRefused");
    assert.equal(err.status, 401);
    assert.match(err.message, /token expired/);
    return true;
  });
  assert.equal(c.status, "closed");
});

test("a refresh the server refuses ends in a 4002 close and a reconnect with a fresh token", async () => {
  let c = null;
  // while connected the source hands out tokens of another key (refused); to connect, good ones
  c = make({ token: () => mint("dave", SHORT_TTL_S, c && c.connected ? "another-key-of-32-bytes-or-more-x" : KEY) });
  assert.ok(await c.waitConnected(WAIT_MS));
  const first = c.connId;
  await waitFor(() => c.connected && c.connId !== first, "a reconnect after 4002", WAIT_MS);
  assert.ok(c.stats().tokenRefreshFailures >= 1);
  assert.equal(c.refusal, null);
});

test("a token source that gives no token stops the client for good", async () => {
  let calls = 0;
  const c = make({ token: () => (++calls === 1 ? mint("erin", SHORT_TTL_S) : null) });
  assert.ok(await c.waitConnected(WAIT_MS));
  await waitFor(() => c.status === "closed", "the client to stop", WAIT_MS);
  assert.equal(c.refusal.code, "token-refused");
  assert.match(c.refusal.message, /gave no token/);
  const failing = make({ token: () => Promise.reject(new Error("IdP down")) });
  await assert.rejects(failing.waitConnected(WAIT_MS), { code: "token-refused" });
  assert.equal(failing.stats().reconnectAttempts, 0);
});
