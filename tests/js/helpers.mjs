// Helpers of the Node tests: a real sente_lite server in a Python child process
// (server_helper.py), driven by JSON lines, and waits with deadlines.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..");
export const require = createRequire(import.meta.url);
export const SenteLite = require(join(repoRoot, "sente_lite", "static", "sente_lite.js"));
export const WebSocket = require("ws");
/** Deadline of every wait: only reached when something is broken. */
export const WAIT_MS = 15000;

/** Start server_helper.py with `args`; resolves to {url, port, cmd(obj), stop()}. */
export function startServer(args = []) {
  const python = process.env.PYTHON || "python3";
  const env = { ...process.env, PYTHONPATH: repoRoot + (process.env.PYTHONPATH ? ":" + process.env.PYTHONPATH : "") };
  const child = spawn(python, [join(here, "server_helper.py"), ...args], { env, stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  const early = [];
  lines.on("line", (line) => {
    const value = JSON.parse(line);
    const w = waiting.shift();
    if (w) { w(value); } else { early.push(value); }
  });
  const next = () => new Promise((resolveLine, reject) => {
    if (early.length) { resolveLine(early.shift()); return; }
    const timer = setTimeout(() => reject(new Error("server helper did not answer")), WAIT_MS);
    waiting.push((v) => { clearTimeout(timer); resolveLine(v); });
  });
  const exited = new Promise((r) => child.on("exit", r));
  return next().then((hello) => ({
    url: hello.url,
    port: hello.port,
    cmd(obj) { child.stdin.write(JSON.stringify(obj) + "\n"); return next(); },
    async stop() {
      child.stdin.end(JSON.stringify({ op: "stop" }) + "\n");
      const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
      await exited;
      clearTimeout(timer);
    },
  }));
}

/** Resolve once `cond()` is truthy (polled every 10 ms); reject after `ms`. */
export function waitFor(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  return new Promise((resolveWait, reject) => {
    const tick = () => {
      let v;
      try { v = cond(); } catch (e) { reject(e); return; }
      if (v) { resolveWait(v); return; }
      if (Date.now() > deadline) { reject(new Error("timed out waiting for " + what)); return; }
      setTimeout(tick, 10);
    };
    tick();
  });
}

/** An HS256 JWT of `claims` (plus iat, and exp `ttl` seconds on) signed with `key`, as an issuer would. */
export function signJwt(claims, ttl, key) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const iat = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ ...claims, iat, exp: iat + ttl });
  return head + "." + createHmac("sha256", key).update(head).digest("base64url");
}

/** A client on `url` with the `ws` WebSocket and quick reconnects, unless overridden. */
export function client(url, options = {}) {
  return new SenteLite.Client(url, { WebSocket, backoffBaseMs: 50, backoffMaxMs: 300, logger: null, ...options });
}
