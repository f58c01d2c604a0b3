// Refused connections end with a clear ConnectRefused and no endless retry; CSRF tokens.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { SenteLite, startServer, client, WAIT_MS } from "./helpers.mjs";

let authSrv, csrfSrv;
const clients = [];
function make(url, options) { const c = client(url, options); clients.push(c); return c; }

before(async () => {
  [authSrv, csrfSrv] = await Promise.all([startServer(["--token", "s3cret"]), startServer(["--csrf"])]);
});
after(async () => {
  clients.forEach((c) => c.close());
  await Promise.all([authSrv.stop(), csrfSrv.stop()]);
});

test("401 without a valid token: refused once, closed, no retry", async () => {
  const c = make(authSrv.url, { token: "wrong" });
  await assert.rejects(c.waitConnected(WAIT_MS), (err) => {
    assert.equal(err.name, "ConnectRefused");
    assert.equal(err.status, 401);
    assert.match(err.message, /HTTP 401 .*credential/);
    return true;
  });
  assert.equal(c.status, "closed");
  assert.equal(c.refusal.status, 401);
  assert.equal(c.stats().reconnectAttempts, 0);
  await assert.rejects(c.request("test/add", [1]), { code: "closed" });
});

test("a token function is evaluated at connect; the uid comes from the server's hook", async () => {
  const c = make(authSrv.url, { token: () => Promise.resolve("s3cret") });
  assert.ok(await c.waitConnected(WAIT_MS));
  assert.equal(c.uid, "user-s3cret");
});

test("CSRF: no token is refused with 403; a fetched token connects", async () => {
  const bad = make(csrfSrv.url);
  await assert.rejects(bad.waitConnected(WAIT_MS), { name: "ConnectRefused", status: 403 });
  assert.match(bad.refusal.message, /csrf-token required/);
  const clientId = "node-csrf-1";
  const good = make(csrfSrv.url, { clientId, csrfToken: () => SenteLite.fetchCsrfToken(csrfSrv.url, clientId) });
  assert.ok(await good.waitConnected(WAIT_MS));
  assert.equal(good.csrfToken, await SenteLite.fetchCsrfToken(csrfSrv.url, clientId));
});
